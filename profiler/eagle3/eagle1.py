"""The EAGLE-1 draft head in plain torch, shaped exactly as vLLM loads it as ``{"method": "eagle"}``.

Why a second head: ``base: "eagle"`` under tilespec needs a head to be tested
with, and there is no EAGLE-1 checkpoint for the tiny target anywhere. The
forward is the one vLLM runs (``vllm/model_executor/models/llama_eagle.py``,
read from the installed 0.32.0 source), which differs from EAGLE-3 in every
piece that matters for training:

- the feature is the target's *output* hidden state (after its final norm;
  vLLM hands ``hidden_states`` of the target's forward to an ``eagle``
  drafter, not aux layers): ``capture.TARGET_OUTPUT``;
- ``fc``: Linear(2 * hidden -> hidden, no bias) over concat(embeds, hidden),
  no norm on either input;
- one Llama decoder layer (checkpoint prefix ``layers.0.``) whose
  ``input_layernorm`` vLLM replaces by the identity (so the checkpoint has
  none), attention over the ``fc`` output (in_features = hidden), residual =
  the ``fc`` output, fused add + ``post_attention_layernorm``, SwiGLU MLP;
- no final norm: ``mlp_out + residual`` goes to the target's ``lm_head``
  (vLLM shares it when the checkpoint has none) and is fed back as the next
  step's hidden;
- the full target vocabulary (no ``d2t``/``t2d``), the target's embedding
  (shared, not saved).

The target's ``embed_tokens`` and ``lm_head`` are frozen copies here and
never exported, so what trains is exactly what vLLM loads.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import MLP, Attention, DraftUnroll, HeadConfig, RMSNorm

KIND = "eagle"
ARCHITECTURE = "EagleLlamaForCausalLM"  # vLLM's registry name (llama_eagle.EagleLlamaForCausalLM)

# Checkpoint tensor names vLLM's EagleLlamaForCausalLM.load_weights accepts (it prefixes "model.").
CHECKPOINT_KEYS = (
    "fc.weight",
    "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight",
    "layers.0.self_attn.o_proj.weight", "layers.0.post_attention_layernorm.weight",
    "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
)


class Eagle1Layer(nn.Module):
    """A Llama decoder layer without ``input_layernorm`` (vLLM's ``disable_input_layernorm`` for layer 0)."""

    def __init__(self, c: HeadConfig):
        super().__init__()
        self.self_attn = Attention(c, in_features=c.hidden)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.mlp = MLP(c)


class Eagle1Head(DraftUnroll, nn.Module):
    """EAGLE-1 head over the target's full vocabulary; ``embed_tokens``/``lm_head`` are the target's, frozen."""

    def __init__(self, c: HeadConfig, embed_weight: torch.Tensor | None = None,
                 lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        if c.kind != KIND:
            raise ValueError(f"Eagle1Head needs a HeadConfig of kind {KIND!r}, got {c.kind!r}")
        if c.hidden != c.target_hidden or c.draft_vocab != c.vocab:
            raise ValueError("an EAGLE-1 head works in the target's hidden size and full vocabulary "
                             f"(hidden {c.hidden} vs target {c.target_hidden}, vocab {c.draft_vocab} vs {c.vocab})")
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        self.fc = nn.Linear(2 * c.hidden, c.hidden, bias=False)
        self.layers = nn.ModuleList([Eagle1Layer(c)])
        self.lm_head = nn.Linear(c.hidden, c.vocab, bias=False)
        self.register_buffer("draft_ids", torch.arange(c.vocab, dtype=torch.long))  # identity map, not saved
        self.apply(self._init)
        for mod, w in ((self.embed_tokens, embed_weight), (self.lm_head, lm_head_weight)):
            if w is not None:
                mod.weight.data.copy_(w)
            mod.weight.requires_grad_(False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def attn(self) -> Attention:
        return self.layers[0].self_attn

    def first_hidden(self, aux: torch.Tensor) -> torch.Tensor:
        return aux  # the target's output hidden state itself

    def _pre(self, tokens: torch.Tensor, hidden: torch.Tensor):
        x = self.fc(torch.cat([self.embed_tokens(tokens), hidden], dim=-1))
        return x, x  # input_layernorm is the identity; the residual is the fc output

    def _post(self, attn_out: torch.Tensor, residual: torch.Tensor):
        layer = self.layers[0]
        h1 = attn_out + residual
        h2 = layer.mlp(layer.post_attention_layernorm(h1)) + h1
        return h2, h2  # no final norm: the sum feeds lm_head and the next step

    def logits_to_target(self, draft_logits: torch.Tensor) -> torch.Tensor:
        return draft_logits.argmax(-1)

    def export_state(self) -> dict[str, torch.Tensor]:
        sd = self.state_dict()
        return {k: sd[k].detach().contiguous().clone() for k in CHECKPOINT_KEYS}
