"""tilespec over model drafters (issue 4): `base: eagle3` / `base: eagle` with the project's tiny EAGLE-3 and
EAGLE-1 heads and `base: draft_model` with the tiny draft, in the real engine (offline LLM, float32).

What a user relies on: greedy output equals no speculation token for token; the drafter's per-token
probabilities and timings reach the scheduler (draft_confidence.py) and the calibration learned from real accept outcomes
is better calibrated than the raw cumulative confidence. The three runs share one cache folder: the profile is
the target's and is reused, the calibration is each drafter's own (meta.json ``calibration_drafter``).
"""

import json

from specdec_engine.cache import drafter_identity
from vllm_engine_helpers import code_edit_prompts, run_llm_script

BODY = '''
target, draft, base, cache = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
prompts = json.loads(sys.argv[5])
spec = None if base == "none" else {"method": "tilespec", "base": base, "model": draft,
                                    "num_speculative_tokens": 3, "cache_dir": cache}
llm = make_llm(target, spec)
ids = greedy_ids(llm, prompts, 40)
out = {"ids": ids}
if spec is not None:
    sch = llm.llm_engine.engine_core.engine_core.scheduler
    out["conf_rows"] = sch.draft_conf_rows
    out["calibration"] = sch._policy.calibration.summary()
    d = sch._policy.drafter
    out["drafter"] = {"observations": d.observations, "costs": d.cost_by_depth(4, 3).tolist()}
    llm.llm_engine.engine_core.shutdown()  # the scheduler saves its calibration (what an operator's restart does)
print("RESULT " + json.dumps(out))
'''


def _prompts():
    long = "".join(f"    value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 40))
    return code_edit_prompts(6) + ["def fibonacci(n):\n", "import os\nimport sys\n\nclass ",
                                   "<|user|>\nContinue this code:\n" + long + "<|end|>\n<|assistant|>\n"] + \
        [f"def function_{i}(arg):\n    " for i in range(5)]


def test_tilespec_over_eagle3_eagle_and_draft_model_is_lossless_and_calibrates_draft_confidence(
        tiny_models, tiny_eagle3, tiny_eagle, tmp_path):
    target, draft = tiny_models
    prompts = json.dumps(_prompts())
    want, _ = run_llm_script(tmp_path, BODY, str(target), "-", "none", str(tmp_path / "c"), prompts)
    previous = None
    for base, model in (("eagle3", tiny_eagle3), ("eagle", tiny_eagle), ("draft_model", draft)):
        got, log = run_llm_script(tmp_path, BODY, str(target), str(model), base, str(tmp_path / "c"), prompts)
        assert f"TileSpec: scheduler active: base={base}" in log, log[-3000:]
        mine = drafter_identity(base, str(model))
        if previous is not None:  # the profile is reused, the last drafter's calibration is not
            assert "already profiled, skipping warmup profiling" in log, log[-3000:]
            assert f"learned over drafter {previous!r}, this engine drafts with {mine!r}" in log, log[-3000:]
        (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("*/meta.json")]
        assert meta["calibration_drafter"] == mine, meta.get("calibration_drafter")
        previous = mine
        bad = [i for i, (w, g) in enumerate(zip(want["ids"], got["ids"])) if w != g]
        assert not bad, f"{base}: greedy prompts {bad} differ from no speculation"
        assert got["conf_rows"] > 20, got  # the drafter's probabilities reached the scheduler
        drafter = got["drafter"]  # ...and its own timings: a proposal costs more the deeper it drafts
        assert drafter["observations"] > 20 and 0 < drafter["costs"][1] < drafter["costs"][3], drafter
        cal = got["calibration"]
        assert cal["n_pairs"] > 100 and cal["ece"] < cal["ece_raw"], cal
