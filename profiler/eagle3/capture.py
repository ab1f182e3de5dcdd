"""Target hidden-state capture for EAGLE-3 training, and the capture-correctness probe.

Why a probe: a capture that takes the wrong layer (an off-by-one between
"output of layer i" and "input of layer i", or HF's final hidden state, which
is already normed) trains a head that looks fine in its own loss and serves at
~0% acceptance. The probe runs before any training: the captured *final*
residual stream, put through the target's own ``norm`` and ``lm_head``, must
reproduce the target's logits. The aux layers are taken by the same indexing
code, so a probe pass means the indexing convention is right.

Layer ids follow vLLM (``EagleModelMixin._maybe_add_hidden_state``): id ``i``
is the residual stream (hidden + residual) after ``i`` decoder layers, before
the final norm; id 0 is the embeddings. In transformers' ``hidden_states``
tuple, entry ``i`` is the same thing for ``i < L``; entry ``L`` is *after* the
final norm, so id ``L`` is taken with a forward hook on the last layer.
``TARGET_OUTPUT`` (-1) is the target's output hidden state, after the final
norm: what vLLM hands an EAGLE-1 (``eagle``) head instead of aux layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError

TARGET_OUTPUT = -1  # layer id of the target's output hidden state (after the final norm): EAGLE-1's feature
PROBE_TOLERANCE = 1e-3  # max |logit diff| in float32; a wrong layer is off by whole units


class CaptureError(RuntimeError):
    """The capture-correctness probe failed: training on these hidden states would be garbage."""


def load_target(path: Path):
    """transformers LlamaForCausalLM in float32, eval mode; a clear UsageError if it is not a Llama folder."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"--target {path}: no config.json (not a model folder)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as err:
        raise UsageError(f"--target {path}: config.json is not JSON ({err})") from None
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or "LlamaForCausalLM" not in archs:
        raise UsageError(f"--target {path}: the local eagle3 backend trains heads for Llama targets "
                         f"(model_type 'llama', LlamaForCausalLM); this config has model_type "
                         f"{cfg.get('model_type')!r}, architectures {archs}")
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def default_aux_layer_ids(num_layers: int) -> tuple[int, ...]:
    """Low/mid/high layers: vLLM's default ``(2, L//2, L-3)`` when those are 3 distinct ids in 1..L-1.

    vLLM de-duplicates the ids (``sorted(set(...))``), so on a shallow target
    its default collapses (L=4 gives (2, 2, 1) -> 2 streams for a 3-stream
    ``fc``); we then spread three ids over 1..L-1 and write them into the
    head's config (``eagle_aux_hidden_state_layer_ids``), which vLLM reads first.
    Ids run 1..L (id L, the last layer's output before the final norm, is
    captured by vLLM and here by a hook).
    """
    ids = (2, num_layers // 2, num_layers - 3)
    if len(set(ids)) == 3 and all(1 <= i < num_layers for i in ids):
        return ids
    if num_layers < 3:
        raise UsageError(f"EAGLE-3 needs a target with at least 3 layers (this one has {num_layers})")
    if num_layers == 3:
        return (1, 2, 3)  # id L = after the last layer, before the final norm (vLLM captures it too)
    return (1, num_layers // 2, num_layers - 1)


def _stream(hidden_states: tuple, final_prenorm: torch.Tensor, layer_id: int, num_layers: int) -> torch.Tensor:
    """The residual stream after ``layer_id`` decoder layers (see the module docstring)."""
    if layer_id == num_layers:
        return final_prenorm
    return hidden_states[layer_id]


@dataclass
class Captured:
    aux: torch.Tensor         # [B, T, n_aux * H] concatenated in the order of layer_ids
    final: torch.Tensor       # [B, T, H] pre-norm residual stream after the last layer
    logits: torch.Tensor      # [B, T, V] the target's own logits from the same forward


@torch.no_grad()
def capture(model, input_ids: torch.Tensor, layer_ids: tuple[int, ...]) -> Captured:
    num_layers = model.config.num_hidden_layers
    box: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        box["final"] = out[0] if isinstance(out, tuple) else out

    h = model.model.layers[-1].register_forward_hook(hook)
    try:
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    finally:
        h.remove()
    hs = out.hidden_states
    final = _stream(hs, box["final"], num_layers, num_layers)
    aux = torch.cat([model.model.norm(box["final"]) if i == TARGET_OUTPUT else _stream(hs, box["final"], i, num_layers)
                     for i in layer_ids], dim=-1)
    return Captured(aux=aux, final=final, logits=out.logits.float())


@torch.no_grad()
def probe(model, input_ids: torch.Tensor, layer_ids: tuple[int, ...], tol: float = PROBE_TOLERANCE) -> dict:
    """Capture-correctness probe; raises CaptureError with the numbers when it fails."""
    cap = capture(model, input_ids, layer_ids)
    recon = model.lm_head(model.model.norm(cap.final)).float()
    diff = (recon - cap.logits).abs().max().item()
    if TARGET_OUTPUT in layer_ids:  # EAGLE-1's feature must be exactly what the target's lm_head reads
        i = layer_ids.index(TARGET_OUTPUT)
        h = model.config.hidden_size
        diff = max(diff, (model.lm_head(cap.aux[..., i * h:(i + 1) * h]).float() - cap.logits).abs().max().item())
    agree = (recon.argmax(-1) == cap.logits.argmax(-1)).float().mean().item()
    n_aux = len(layer_ids)
    h = model.config.hidden_size
    shape_ok = cap.aux.shape[-1] == n_aux * h
    result = {"max_abs_logit_diff": diff, "argmax_agreement": agree, "tolerance": tol,
              "layer_ids": list(layer_ids), "num_layers": model.config.num_hidden_layers,
              "tokens": int(input_ids.numel()), "passed": bool(diff <= tol and shape_ok)}
    if not result["passed"]:
        raise CaptureError(
            f"capture-correctness probe failed: the captured final hidden state through the target's norm + "
            f"lm_head differs from the target's logits by max |diff| {diff:.4g} (tolerance {tol:g}, argmax "
            f"agreement {agree:.3f}, aux width {cap.aux.shape[-1]} vs {n_aux}x{h}); the capture takes the wrong "
            f"layer, refusing to train on it")
    return result
