"""Runs interp_cases.py (Triton kernels vs twins) under TRITON_INTERPRET=1 in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_triton_kernels_match_their_twins_under_the_interpreter():
    pytest.importorskip("triton")
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(here),
                          str(here / "interp_cases.py")], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
