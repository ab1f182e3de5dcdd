"""`specdec tiles profile|calibrate|show` on the CPU with a tiny Llama shape (the GPU run is a benchmark)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512,
        "_name_or_path": "tiny-llama-shape"}


def specdec(*args):
    return subprocess.run([sys.executable, "-m", "specdec_profiler.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_profile_writes_the_engine_cache_and_reuses_it(tmp_path):
    args = ["tiles", "profile", "--hf-config", json.dumps(TINY), "--device", "cpu", "--batch-sizes", "1-4,8",
            "--k", "3", "--repeats", "3", "--warmup", "1", "--context-len", "32", "--out", str(tmp_path)]
    out = specdec(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    d = Path(res["dir"])
    assert res["points"] == 5 * 4 and d.name.startswith("tiny-llama-shape_cpu_tp1")
    meta = json.loads((d / "meta.json").read_text())
    assert meta["grid"]["batch_sizes"] == [1, 2, 3, 4, 8] and meta["profile"]["holdout_mape"] is not None
    for f in ("latency_model.npz", "plots/latency_model.png", "plots/token_distribution.png"):
        assert (d / f).is_file()
    assert not list(tmp_path.glob("*.partial.jsonl"))  # the progress log is gone once the cache is written
    again = specdec(*args)
    assert again.returncode == 0 and "already profiled, skipping" in again.stdout
    shown = specdec("tiles", "show", str(d))
    assert shown.returncode == 0 and "tile boundaries" in shown.stdout and "held-back" in shown.stdout


def test_interrupted_sweep_keeps_its_points_and_resumes(tmp_path):
    from specdec_profiler import tiles_profile

    calls = []

    class Timer:
        def __call__(self, b, q):
            calls.append((b, q))
            if (b, q) == (2, 2):
                raise KeyboardInterrupt  # killed mid-sweep
            return [1.0 + 0.1 * b * q] * 3

    log = tmp_path / "x.partial.jsonl"
    with pytest.raises(KeyboardInterrupt):
        tiles_profile.sweep(Timer(), [1, 2], [1, 2, 3], log, 1e9, 1, 1)
    samples, done = tiles_profile.read_log(log)
    assert done == {(1, 1), (1, 2), (1, 3), (2, 1)}
    res = tiles_profile.sweep(lambda b, q: [2.0] * 3, [1, 2], [1, 2, 3], log, 1e9, 1, 1, done=done)
    samples, done = tiles_profile.read_log(log)
    assert len(done) == 6 and not res["skipped"]


def test_out_of_memory_point_is_skipped_and_the_rest_kept(tmp_path):
    import torch

    from specdec_profiler import tiles_profile

    def timer(b, q):
        if b == 4 and q >= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [float(b * q)]

    res = tiles_profile.sweep(timer, [1, 4], [1, 2, 3], tmp_path / "l.jsonl", 1e9, 1, 1)
    _, done = tiles_profile.read_log(tmp_path / "l.jsonl")
    assert done == {(1, 1), (1, 2), (1, 3), (4, 1)}
    assert any("out of GPU memory" in s for s in res["skipped"]) and any("skipped after" in s for s in res["skipped"])


@pytest.mark.parametrize("cfg,msg", [
    ({**TINY, "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
    ({k: v for k, v in TINY.items() if k != "hidden_size"}, "'hidden_size'"),
])
def test_bad_config_is_a_clear_error(tmp_path, cfg, msg):
    out = specdec("tiles", "profile", "--hf-config", json.dumps(cfg), "--device", "cpu", "--out", str(tmp_path))
    assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr


def test_no_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = specdec("tiles", "profile", "--hf-config", json.dumps(TINY), "--out", str(tmp_path))
    assert out.returncode == 2 and "no GPU" in out.stderr


def test_calibrate_from_a_log_of_outcomes(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(3000):
        s = float(rng.random())
        lines.append(json.dumps({"score": s, "accepted": int(rng.random() < s ** 2), "position": int(rng.integers(0, 3))}))
    log = tmp_path / "outcomes.jsonl"
    log.write_text("\n".join(lines) + "\n")
    out = specdec("tiles", "calibrate", "--from-log", str(log), "--positions", "3", "--out", str(tmp_path / "cal"))
    assert out.returncode == 0, out.stderr
    summ = json.loads(out.stdout.strip().splitlines()[-1])
    assert summ["n_pairs"] == 3000 and summ["ece"] < summ["ece_raw"]
    assert (tmp_path / "cal" / "calibration.png").is_file()
    log.write_text('{"score": 2.0, "accepted": 1}\n')
    bad = specdec("tiles", "calibrate", "--from-log", str(log), "--out", str(tmp_path / "cal2"))
    assert bad.returncode == 2 and "outcomes.jsonl:1" in bad.stderr
