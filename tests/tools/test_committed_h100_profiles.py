"""The H100 profiles committed under benchmarks/results/tiles/ load where the engine loads them, and predict.

They were measured by `specdec tiles profile` on an H100 (benchmarks/gpu_session.sh); the
engine reads the same cache layout, so a key as the vLLM adapter builds it must find them.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from specdec_engine.cache import CacheKey, ProfileCache
from specdec_engine.policy import KSelector

TILES = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tiles"
DIRS = sorted(p for p in TILES.glob("*_tp1") if (p / "meta.json").is_file())


def test_the_committed_profiles_are_there():
    names = {p.name.split("_")[0] for p in DIRS}
    assert {"llama-3.1-8b-ctx512", "llama-3.1-8b-ctx4096", "qwen2.5-14b-ctx512", "qwen2.5-14b-ctx4096"} <= names


@pytest.mark.parametrize("src", DIRS, ids=lambda p: p.name.split("_")[0])
def test_engine_key_loads_the_offline_profile_and_predicts(tmp_path, src):
    root = tmp_path / "cache"
    shutil.copytree(src, root / src.name)          # a copy: a failed load would move the original aside
    stored = json.loads((src / "meta.json").read_text())["key"]
    # the key exactly as specdec_engine.vllm.warmup.cache_key builds it inside vLLM
    key = CacheKey(model=stored["model"], gpu=stored["gpu"], tp=1, dtype=stored["dtype"], engine="vllm",
                   engine_version="0.32.0")
    assert key.dirname == src.name
    entry = ProfileCache(root).load(key)
    assert entry is not None and (root / src.name).is_dir(), "the engine would re-profile (or moved it aside)"
    lat = entry.latency
    assert entry.meta["profile"]["holdout_mape"] < 5.0
    # predictions reproduce the measured medians it holds
    pred = lat.predict(lat.batch_sizes, lat.token_counts)
    assert np.max(np.abs(pred - lat.latencies_ms) / lat.latencies_ms) < 0.01
    # and the selector runs on it: B=64 requests with falling confidences get K in 0..8
    rng = np.random.default_rng(0)
    cum = np.cumprod(rng.uniform(0.5, 0.95, (64, 8)), axis=1)
    sel = KSelector(lat, 8).select(cum, np.full(64, 8))
    assert sel.k.shape == (64,) and 0 <= sel.k.min() and sel.k.max() <= 8 and sel.k.sum() > 0


def test_llama_8b_h100_latency_is_not_monotone_in_tokens():
    """The reason for tiles: on the H100, B=64 x 7 tokens (N=448) is slower than x 8 (N=512)."""
    src = next(p for p in DIRS if p.name.startswith("llama-3.1-8b-ctx512_"))
    entry = ProfileCache(src.parent).load(CacheKey(model="llama-3.1-8b-ctx512", gpu="NVIDIA H100 80GB HBM3",
                                                   tp=1, dtype="bfloat16", engine="vllm"))
    assert entry is not None
    assert entry.latency.predict(64, 448) > 1.1 * entry.latency.predict(64, 512)
