"""Export a trained head as SpecForge does and vLLM loads it (``{"method": "eagle3", "model": DIR}``).

The folder holds:

- ``config.json``: a Llama config (built with the installed transformers'
  ``LlamaConfig`` so its keys are the ones this transformers/vLLM reads) with
  ``architectures: ["LlamaForCausalLMEagle3"]`` (registered in vLLM as
  ``llama_eagle3.Eagle3LlamaForCausalLM``), ``num_hidden_layers: 1``,
  ``draft_vocab_size``, ``target_hidden_size``, and
  ``eagle_aux_hidden_state_layer_ids`` (vLLM reads it before its default
  ``(2, L//2, L-3)``, which collapses on shallow targets);
- ``model.safetensors``: the tensors of ``model.CHECKPOINT_KEYS`` (no
  ``embed_tokens``: vLLM then shares the target's embedding, which is the one
  the head was trained with);
- ``training_log.json`` and ``specdec_eagle3.json`` (our manifest: target,
  fingerprint, sha256 of every file).

An EAGLE-1 head (``kind: "eagle"``, ``eagle1.py``) is exported the same way
with ``architectures: ["EagleLlamaForCausalLM"]``, the tensors of
``eagle1.CHECKPOINT_KEYS`` (no embedding, no lm_head: vLLM shares the
target's), served as ``{"method": "eagle", "model": DIR}``.

No tokenizer: vLLM takes the draft's tokenizer from the target for eagle3
(``SpeculativeConfig`` builds the draft ``ModelConfig`` with the target's
tokenizer), and the head's vocabulary is the target's by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import CHECKPOINT_KEYS, Eagle3Head, HeadConfig

MANIFEST = "specdec_eagle3.json"


def hf_config(c: HeadConfig, target_cfg) -> dict:
    """The head's config.json; an EAGLE-1 head (``c.kind == "eagle"``) is a one-layer Llama named
    ``EagleLlamaForCausalLM`` (vLLM keeps an ``Eagle`` prefix when it wraps it in its EAGLEConfig)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate, num_hidden_layers=1,
        num_attention_heads=c.heads, num_key_value_heads=c.kv_heads, head_dim=c.head_dim,
        max_position_embeddings=c.max_positions, rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=False, bos_token_id=getattr(target_cfg, "bos_token_id", None),
        eos_token_id=getattr(target_cfg, "eos_token_id", None), pad_token_id=getattr(target_cfg, "pad_token_id", None),
    ).to_dict()
    if c.kind == "eagle":
        from .eagle1 import ARCHITECTURE

        cfg.update({"architectures": [ARCHITECTURE], "model_type": "llama", "dtype": "float32"})
        cfg.pop("torch_dtype", None)
        return cfg
    cfg.update({
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "draft_vocab_size": c.draft_vocab,
        "target_hidden_size": c.target_hidden,
        "eagle_aux_hidden_state_layer_ids": list(c.aux_layer_ids),
        "dtype": "float32",
    })
    cfg.pop("torch_dtype", None)
    return cfg


def file_hashes(d: Path) -> dict[str, str]:
    from ..tiny_model import _file_hashes

    return _file_hashes(d, MANIFEST)


def export(head, target_cfg, out: Path, record: dict | None = None, manifest: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = head.export_state()
    assert tuple(state) == _checkpoint_keys(head.c)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(head.c, target_cfg), indent=2) + "\n")
    if record is not None:
        (out / "training_log.json").write_text(json.dumps(record, indent=1) + "\n")
    man = {"schema": "specdec_eagle3_v1", "head": head.c.to_dict(), **(manifest or {})}
    man["files"] = file_hashes(out)
    (out / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")
    return out


def _checkpoint_keys(c: HeadConfig) -> tuple[str, ...]:
    if c.kind == "eagle":
        from .eagle1 import CHECKPOINT_KEYS as EAGLE1_KEYS

        return EAGLE1_KEYS
    return CHECKPOINT_KEYS


def load_head(folder: Path, embed_weight: torch.Tensor | None = None, lm_head_weight: torch.Tensor | None = None):
    """Read an exported head back (tests; continuing from an export). An EAGLE-1 head takes the target's
    ``lm_head_weight`` too (it has none of its own)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    man = json.loads((folder / MANIFEST).read_text())
    c = HeadConfig.from_dict(man["head"])
    if c.kind == "eagle":
        from .eagle1 import Eagle1Head

        head = Eagle1Head(c, embed_weight, lm_head_weight)
    else:
        head = Eagle3Head(c, embed_weight)
    state = load_file(str(folder / "model.safetensors"))
    missing = head.load_state_dict(state, strict=False)
    bad = [k for k in missing.missing_keys if k not in ("embed_tokens.weight", "lm_head.weight", "draft_ids")
           or (k == "lm_head.weight" and c.kind != "eagle")]
    if bad or missing.unexpected_keys:
        raise ValueError(f"{folder}: checkpoint keys do not match the head: missing {bad}, "
                         f"unexpected {missing.unexpected_keys}")
    if c.kind != "eagle":
        head.draft_ids.copy_(torch.arange(head.c.draft_vocab) + head.d2t)
    return head
