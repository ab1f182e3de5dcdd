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


def _tiny_head(flag: str, key: str, target: Path) -> Path:
    """Build or reuse one of the tiny target's heads with `specdec tiny-model FLAG`; its folder (line KEY)."""
    out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "tiny-model", flag],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(x.split(": ", 1) for x in out.stdout.strip().splitlines()[:-1])
    assert Path(lines["target"]) == target
    return Path(lines[key])


@pytest.fixture(scope="session")
def tiny_eagle3(tiny_models) -> Path:
    """The tiny target's EAGLE-3 head, built by `specdec tiny-model --eagle3` (a few minutes once, then reused)."""
    return _tiny_head("--eagle3", "eagle3", tiny_models[0])


@pytest.fixture(scope="session")
def tiny_eagle(tiny_models) -> Path:
    """The tiny target's EAGLE-1 head, built by `specdec tiny-model --eagle` (a few minutes once, then reused)."""
    return _tiny_head("--eagle", "eagle", tiny_models[0])
