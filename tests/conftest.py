"""Shared fixtures: paths to the measured data and the project's tiny models (built once, cached)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
H100_CSV = ROOT / "benchmarks" / "data" / "h100_llama8b_4layer_verify_latency.csv"

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


@pytest.fixture(scope="session")
def h100_csv() -> Path:
    return H100_CSV


@pytest.fixture(scope="session")
def h100_model():
    from specdec_engine.policy import LatencyModel
    from specdec_profiler.tiles import read_latency_csv

    b, n, lat = read_latency_csv(H100_CSV, "N", "graph_full_fa_ms", "B")
    return LatencyModel.fit(b, n, lat)


@pytest.fixture(scope="session")
def tiny_models() -> tuple[Path, Path]:
    """(target, draft) folders, built by `specdec tiny-model --draft` (minutes once, then reused)."""
    out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "tiny-model", "--draft"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(x.split(": ", 1) for x in out.stdout.strip().splitlines()[:-1])
    return Path(lines["target"]), Path(lines["draft"])


@pytest.fixture(scope="session")
def tiny_eagle3(tiny_models) -> Path:
    """The tiny target's EAGLE-3 head, built by `specdec tiny-model --eagle3` (a few minutes once, then reused)."""
    out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "tiny-model", "--eagle3"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(x.split(": ", 1) for x in out.stdout.strip().splitlines()[:-1])
    assert Path(lines["target"]) == tiny_models[0]
    return Path(lines["eagle3"])


@pytest.fixture(scope="session")
def tiny_eagle(tiny_models) -> Path:
    """The tiny target's EAGLE-1 head, built by `specdec tiny-model --eagle` (a few minutes once, then reused)."""
    out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "tiny-model", "--eagle"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(x.split(": ", 1) for x in out.stdout.strip().splitlines()[:-1])
    assert Path(lines["target"]) == tiny_models[0]
    return Path(lines["eagle"])
