import json
import logging
import os

import numpy as np
import pytest

from specdec_engine.cache import CacheKey, ProfileCache, drafter_identity
from specdec_engine.policy import Calibration

KEY = CacheKey(model="meta-llama/Llama-3.1-8B", gpu="NVIDIA H100 80GB HBM3", tp=1, dtype="bfloat16",
               engine="vllm", engine_version="0.32.0")


def _cal():
    cal = Calibration()
    rng = np.random.default_rng(0)
    s = rng.random(500)
    cal.update(s, rng.random(500) < s ** 2)
    return cal


def test_roundtrip_with_meta_and_plots(tmp_path, h100_model):
    cache = ProfileCache(tmp_path)
    d = cache.save(KEY, h100_model, _cal(), extra_meta={"grid": {"batch_sizes": [1, 2]}})
    assert d.name == "meta-llama--Llama-3.1-8B_NVIDIA-H100-80GB-HBM3_tp1"
    for f in ("latency_model.npz", "calibration.npz", "meta.json", "plots/latency_model.png",
              "plots/calibration.png", "plots/token_distribution.png"):
        assert (d / f).is_file(), f
    meta = json.loads((d / "meta.json").read_text())
    assert meta["key"]["engine_version"] == "0.32.0" and meta["grid"] == {"batch_sizes": [1, 2]}
    assert set(meta["files"]) == {"latency_model.npz", "calibration.npz"}
    assert meta["calibration"]["ece"] is not None
    entry = cache.load(KEY)
    assert entry.latency.predict(16, 64) == pytest.approx(h100_model.predict(16, 64))
    assert entry.calibration.n_pairs == 500
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert cache.validate_dir(d) == []


def test_corrupt_latency_model_is_moved_aside(tmp_path, h100_model, caplog):
    cache = ProfileCache(tmp_path)
    d = cache.save(KEY, h100_model, plots=False)
    (d / "latency_model.npz").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert cache.load(KEY) is None
    assert "moved aside" in caplog.text
    assert not d.exists() and any(".corrupt-" in p.name for p in tmp_path.iterdir())
    assert cache.save(KEY, h100_model, plots=False) == d  # re-profiled result writes cleanly


def test_corrupt_calibration_alone_is_moved_aside_and_latency_kept(tmp_path, h100_model):
    cache = ProfileCache(tmp_path)
    d = cache.save(KEY, h100_model, _cal(), plots=False)
    (d / "calibration.npz").write_bytes(b"\x00" * 50)
    entry = cache.load(KEY)
    assert entry is not None and entry.latency is not None and entry.calibration is None
    assert any(p.name.startswith("calibration.npz.corrupt-") for p in d.iterdir())


def test_half_written_cache_is_never_loaded(tmp_path, h100_model):
    cache = ProfileCache(tmp_path)
    d = cache.save(KEY, h100_model, plots=False)
    (d / "meta.json").unlink()  # killed before meta.json was written
    assert cache.load(KEY) is None


def test_stale_cache_for_another_engine_version_is_not_used(tmp_path, h100_model):
    cache = ProfileCache(tmp_path)
    cache.save(KEY, h100_model, plots=False)
    newer = CacheKey(**{**KEY.identity(), "engine_version": "0.33.0"})
    assert cache.load(newer) is None


def test_unwritable_root_degrades_to_memory(tmp_path, h100_model, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cache = ProfileCache(blocker / "cache")
    with caplog.at_level(logging.WARNING):
        assert cache.save(KEY, h100_model) is None
        assert cache.save(KEY, h100_model) is None
    # one warning per cache, not one per write (the same record may reach caplog by two routes once
    # the vLLM plugin has routed specdec_engine's logs through vLLM's logger in this process)
    assert len({id(r) for r in caplog.records if "not writable" in r.getMessage()}) == 1 and not cache.writable


@pytest.mark.parametrize("model", ["../../../etc/passwd", "/abs/path/../../x", "..", "a/../../b", "~root"])
def test_no_model_name_escapes_the_root(tmp_path, model, h100_model):
    cache = ProfileCache(tmp_path / "c")
    key = CacheKey(model=model, gpu="../gpu", tp=1)
    p = cache.path_for(key)
    assert p.parent == (tmp_path / "c").resolve()
    cache.save(key, h100_model, plots=False)
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_local_model_paths_do_not_collide(tmp_path):
    a = CacheKey(model=str(tmp_path / "one" / "model"), gpu="cpu")
    b = CacheKey(model=str(tmp_path / "two" / "model"), gpu="cpu")
    assert a.dirname != b.dirname and a.dirname.startswith("model-")


def test_calibration_of_another_drafter_is_not_loaded_but_the_profile_is(tmp_path, h100_model, caplog):
    cache = ProfileCache(tmp_path)
    head_a = drafter_identity("eagle3", str(tmp_path / "head-a"))
    head_b = drafter_identity("eagle3", str(tmp_path / "head-b"))
    assert head_a != head_b and head_a.startswith("eagle3:head-a-") and drafter_identity("ngram") == "ngram"
    d = cache.save(KEY, h100_model, _cal(), extra_meta={"history_priors": {"0": [1.0, 2.0]}}, plots=False,
                   drafter=head_a)
    assert json.loads((d / "meta.json").read_text())["calibration_drafter"] == head_a
    assert cache.load(KEY, head_a).calibration.n_pairs == 500  # the same head: all of it
    with caplog.at_level(logging.INFO, logger="specdec_engine.cache"):
        entry = cache.load(KEY, head_b)
    assert entry is not None and entry.latency is not None  # the profile is the target's: reused
    assert entry.calibration is None and "history_priors" not in entry.meta and "calibration" not in entry.meta
    assert f"learned over drafter {head_a!r}, this engine drafts with {head_b!r}" in caplog.text
    assert (d / "calibration.npz").is_file()  # nothing moved aside: head A's engine still finds it
    # head B's engine saves its own: the record says whose it is now, head A's priors do not stay with it
    cache.save(KEY, calibration=Calibration(), plots=False, drafter=head_b)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["calibration_drafter"] == head_b and "history_priors" not in meta
    assert cache.load(KEY, head_a).calibration is None


def test_calibration_saved_before_drafters_were_recorded_is_still_loaded(tmp_path, h100_model):
    cache = ProfileCache(tmp_path)
    cache.save(KEY, h100_model, _cal(), plots=False)
    assert cache.load(KEY, drafter_identity("eagle", "/models/head")).calibration.n_pairs == 500
