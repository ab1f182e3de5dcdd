"""`specdec aa` against a plain `vllm serve` (no speculation): metrics filled, acceptance fields null."""

import json
import subprocess
import sys

from specdec_profiler.vllm_server import VLLMServer


def test_aa_benchmark_without_speculation_has_null_acceptance(target_model, tmp_path):
    with VLLMServer(target_model, log_path=tmp_path / "serve.log") as srv:
        out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "aa", "--endpoint", srv.url, "--model",
                              "tiny", "--shapes", "aa-1k", "--mode", "dataset-replay", "--scale", "0.05",
                              "--requests", "4", "--concurrency", "2", "--out", str(tmp_path / "aa")],
                             capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "aa" / "aa-1k" / "summary.json").read_text())
    assert s["metrics"]["ok"] == 4 and s["metrics"]["tpot_ms"]["p50"] > 0
    sd = s["spec_decode"]
    assert sd["metrics_available"] and sd["drafts"] == 0
    assert sd["acceptance_length"] is None and sd["accept_rate"] is None
    assert s["context"]["mode"] == "dataset-replay"
    assert len((tmp_path / "aa" / "aa-1k" / "dataset.jsonl").read_text().splitlines()) == 4
