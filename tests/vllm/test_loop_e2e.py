"""`specdec loop` oneshot end to end: generated traffic -> profile -> A/B on two real `vllm serve` arms -> verdict.

Method ngram (nothing to train; the local trainer's own path is covered in tests/tools/test_loop.py and
tests/tools/test_eagle3_train.py): standing = no speculation, candidate = tilespec over ngram.
"""

import json
import subprocess
import sys
from pathlib import Path

from specdec_profiler.synth_traffic import generate


def test_oneshot_loop_ends_in_a_measured_verdict_with_a_report(target_model, tmp_path):
    log = tmp_path / "access.jsonl"
    generate(log, 60, {"code": 0.7, "rewrite": 0.3}, seed=4, code_overlap=0.8)
    r = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "loop", "--target", str(target_model),
                        "--served", "local", "--standing-config", "none", "--profile", str(log), "--method", "ngram",
                        "--workdir", str(tmp_path / "w"), "--ab-trials", "3", "--ab-requests", "6",
                        "--ab-concurrency", "2", "--ab-max-tokens", "24", "--ab-burn-in", "1",
                        "--ab-max-model-len", "1024"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode in (0, 1), r.stdout + r.stderr[-4000:]  # GO or NO-GO, never a red gate
    st = json.loads((tmp_path / "w" / "service-state.json").read_text())
    exp = st["current"]
    verdict = st["last_ab_verdict"]["verdict"]
    assert verdict == ("GO" if r.returncode == 0 else "NO-GO")
    assert [exp["phases"][k]["status"] for k in "012345"] == ["done", "done", "skipped", "skipped", "done", "done"]
    ev = Path(exp["evidence_dir"])
    v = json.loads((ev / "phase-4-ab" / "verdict.json").read_text())
    assert v["baseline"]["n_usable"] == 3 and v["candidate"]["n_usable"] == 3
    for arm in ("standing", "candidate"):
        for i in range(3):
            s = json.loads((ev / "phase-4-ab" / arm / f"trial-{i}" / "summary.json").read_text())
            assert s["errors"]["count"] == 0 and s["metrics"]["ok"] == 6
            assert (s["spec_decode"]["acceptance_length"] is None) == (arm == "standing")
    report = (ev / "report.md").read_text()
    assert f"A/B verdict: **{verdict}**" in report and "vllm serve" in report and (ev / "ab.png").is_file()
    if verdict == "GO":
        assert st["standing_config"]["method"] == "tilespec"
    else:
        assert st["standing_config"] is None
