"""Make a trained small Llama *costly* without changing what it computes: the benchmark target.

With the 3M-parameter tiny target, vLLM's per-step overhead dominates on a
CPU and no K policy can show anything (measured: ngram K=4/K=8 run at the
speed of no speculation). Benchmarks need a model whose forward dominates the
step, and it must still produce the trained model's text so that acceptance
means something. Training a big model is out of reach here, so the trained
model is embedded in a wider one:

- the hidden size grows (zero padding): embeddings and every projection that
  writes into the residual stream (``o_proj``, ``down_proj``) are zero in the
  new dimensions, so the residual stream stays exactly the small model's;
- every RMSNorm sees the padded vector, whose mean square is ``h0/h1`` of the
  original: its weight is scaled by ``sqrt(h0/h1)`` and ``rms_norm_eps`` by
  ``h0/h1``, which makes the normalised values identical;
- extra attention heads and MLP neurons get random weights (real work for the
  hardware) but zero output projections (no effect on the result); the
  original query heads are placed so that each still reads its own KV head
  under the new grouping.

Matrix products now sum over extra zero terms, so results match the small
model up to float rounding (checked: max |logit difference| is printed).
The widened model is its own model; all comparisons (speculation on/off) are
made on it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path


def widen_state_dict(sd: dict, cfg: dict, hidden: int, heads: int, kv_heads: int, intermediate: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    h0, n0, kv0 = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    i0 = cfg["intermediate_size"]
    d = cfg.get("head_dim") or h0 // n0
    if hidden % heads or hidden // heads != d:
        raise ValueError(f"widened head_dim must stay {d} (hidden {hidden} / heads {heads})")
    g0, g1 = n0 // kv0, heads // kv_heads
    if hidden < h0 or heads < n0 or kv_heads < kv0 or intermediate < i0 or g1 < g0:
        raise ValueError("widen only grows the model, and each KV head must serve at least as many query heads")
    slot = [(j // g0) * g1 + (j % g0) for j in range(n0)]  # new index of original query head j
    scale = math.sqrt(h0 / hidden)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    out = {}
    for name, w in sd.items():
        w = w.float()
        if name.endswith("embed_tokens.weight"):
            new = torch.zeros(w.shape[0], hidden)
            new[:, :h0] = w
        elif name == "lm_head.weight":
            new = rnd(w.shape[0], hidden)
            new[:, :h0] = w
        elif name.endswith("norm.weight"):
            new = torch.full((hidden,), scale)
            new[:h0] = w * scale
        elif name.endswith("q_proj.weight"):
            new = rnd(heads * d, hidden)
            for j, s in enumerate(slot):
                new[s * d:(s + 1) * d, :h0] = w[j * d:(j + 1) * d]
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            new = rnd(kv_heads * d, hidden)
            new[:kv0 * d, :h0] = w
        elif name.endswith("o_proj.weight"):
            new = torch.zeros(hidden, heads * d)
            for j, s in enumerate(slot):
                new[:h0, s * d:(s + 1) * d] = w[:, j * d:(j + 1) * d]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            new = rnd(intermediate, hidden)
            new[:i0, :h0] = w
        elif name.endswith("down_proj.weight"):
            new = torch.zeros(hidden, intermediate)
            new[:h0, :i0] = w
        else:
            raise ValueError(f"widen: unexpected weight {name!r} (not a plain Llama?)")
        out[name] = new.contiguous()
    new_cfg = dict(cfg, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                   intermediate_size=intermediate, head_dim=d, rms_norm_eps=cfg["rms_norm_eps"] * h0 / hidden)
    return out, new_cfg


def widen(src: Path, dst: Path, hidden: int = 1024, heads: int = 32, kv_heads: int = 8,
          intermediate: int = 4096) -> dict:
    """Write the widened copy of the Llama in ``src`` to ``dst``; return a check of its logits."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    cfg = json.loads((src / "config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    new_sd, new_cfg = widen_state_dict(sd, cfg, hidden, heads, kv_heads, intermediate)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json", "specdec_tiny.json"):
            shutil.copy2(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
    save_file(new_sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    # check: same logits as the small model, up to rounding
    ids = torch.arange(5, 69).unsqueeze(0)
    with torch.no_grad():
        a = LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32)(ids).logits
        b = LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32)(ids).logits
    diff = float((a - b).abs().max())
    agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    if diff > 1e-2:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"widened model diverges from the original (max |logit diff| {diff:.3g})")
    n_params = sum(v.numel() for v in new_sd.values())
    check = {"source": str(src), "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
             "intermediate": intermediate, "params": n_params, "max_abs_logit_diff": diff, "argmax_agreement": agree}
    (tmp / "widened_from.json").write_text(json.dumps(check, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return check
