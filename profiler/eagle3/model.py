"""The EAGLE-3 draft head in plain torch, shaped exactly as vLLM loads it.

Why plain torch and not a transformers class: there is no EAGLE-3 model in
transformers, and the head's forward must be the one vLLM runs
(``vllm/model_executor/models/llama_eagle3.py``, read from the installed
source), or a head that trains well here serves at low acceptance there.
What vLLM does, and this module mirrors:

- ``fc``: Linear(n_aux * target_hidden -> hidden, no bias) over the
  concatenated target residual streams of the aux layers (vLLM layer id ``i``
  = the residual stream after ``i`` decoder layers, before the final norm);
- one decoder layer (checkpoint prefix ``midlayer.``, vLLM maps it to
  ``layers.0``): ``input_layernorm`` on the token embeddings,
  ``hidden_norm`` on the hidden input, residual = the un-normed hidden input
  (``norm_before_residual`` false), attention over concat(embeds, hidden)
  (q/k/v in_features = 2 * hidden), fused add + ``post_attention_layernorm``,
  SwiGLU MLP;
- ``norm``: fused add + RMSNorm; the normed output feeds ``lm_head``, the
  pre-norm sum is the hidden state fed back for the next draft step;
- ``lm_head`` over ``draft_vocab_size`` tokens; ``d2t[i]`` is the offset
  ``target_id - i`` of draft token ``i`` (vLLM computes ``i + d2t[i]``),
  ``t2d`` is a bool mask over the target vocabulary (vLLM skips it; SpecForge
  writes it).
- ``embed_tokens`` is the target's, frozen and not saved: vLLM shares the
  target's embedding when the checkpoint has none (``has_own_embed_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Checkpoint tensor names vLLM's Eagle3LlamaForCausalLM.load_weights accepts (embed_tokens omitted on purpose).
CHECKPOINT_KEYS = (
    "fc.weight",
    "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight", "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight",
    "norm.weight", "lm_head.weight", "d2t", "t2d",
)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    draft_vocab: int
    target_hidden: int
    aux_layer_ids: tuple[int, ...]
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 2048
    kind: str = "eagle3"  # "eagle3" (Eagle3Head) or "eagle" (EAGLE-1, eagle1.Eagle1Head)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aux_layer_ids"] = list(self.aux_layer_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        d = dict(d)
        d["aux_layer_ids"] = tuple(d["aux_layer_ids"])
        return cls(**d)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * self.weight


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style (rotate-half) rotary tables, as vLLM's default Llama rope."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[..., None] * inv
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, heads, T, hd]; cos/sin: [B, T, hd] or [T, hd]
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, c: HeadConfig, in_features: int | None = None):
        super().__init__()
        self.c = c
        n_in = 2 * c.hidden if in_features is None else in_features  # EAGLE-3 attends over concat(embeds, hidden)
        self.q_proj = nn.Linear(n_in, c.heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(n_in, c.kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(n_in, c.kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden, bias=False)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """Rotary-embedded q [B,H,T,hd] and k/v [B,H,T,hd] (kv heads repeated for GQA)."""
        c = self.c
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, c.heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = c.heads // c.kv_heads
        return q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)


class MLP(nn.Module):
    def __init__(self, c: HeadConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.hidden, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    def __init__(self, c: HeadConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.hidden_norm = RMSNorm(c.hidden, c.rms_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden, c.rms_eps)
        self.self_attn = Attention(c)
        self.mlp = MLP(c)


class DraftUnroll:
    """The training-time-test unroll shared by the EAGLE-3 and EAGLE-1 heads.

    A head provides ``c``, ``attn`` (an :class:`Attention`), ``lm_head``,
    ``first_hidden(aux)`` (the hidden input of draft step 0), ``_pre(tokens,
    hidden) -> (attention input, residual)`` and ``_post(attn_out, residual)
    -> (input of lm_head, hidden fed back)``; the attention pattern over the
    verified prefix and the chain's own earlier steps is the same for both.
    """

    def unroll(self, aux: torch.Tensor, tokens: torch.Tensor, steps: int):
        """Training-time test: draft ``steps`` tokens from every position at once.

        ``aux``: [B, T, n_aux*target_hidden], the target's aux streams at
        positions 0..T-1. ``tokens``: [B, T] the sequence. The chain that
        starts at position t drafts step k at position t+k from input token
        ``tokens[t+1+k]`` (teacher forcing: the token the draft would have
        fed had it been right, which is all acceptance depends on) and the
        hidden state it produced at step k-1 (step 0: ``first_hidden(aux[t])``). Step k's
        query for chain t attends to the step-0 keys at positions <= t (the
        draft's KV for the verified prefix) and to chain t's own keys of steps
        1..k, exactly the KV a vLLM drafting step sees. Returns a list of
        draft-vocab logits [B, T, Vd] per step (only the first T-1-k positions
        have an input token; callers mask the rest).
        """
        c = self.c
        b, t, _ = aux.shape
        hidden = self.first_hidden(aux)
        pos0 = torch.arange(t)
        scale = 1.0 / math.sqrt(c.head_dim)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        keys0 = vals0 = None
        diag_k: list[torch.Tensor] = []
        diag_v: list[torch.Tensor] = []
        outs = []
        for k in range(steps):
            # input token for chain t at step k is tokens[t+1+k]; pad the tail (masked by the caller)
            tok = torch.roll(tokens, shifts=-(1 + k), dims=1)
            x, residual = self._pre(tok, hidden)
            q, kk, vv = self.attn.qkv(x, pos0 + k)
            if k == 0:
                keys0, vals0 = kk, vv
                s = (q @ keys0.transpose(-1, -2)) * scale
                s = s.masked_fill(~causal, float("-inf"))
                p = s.softmax(-1)
                o = p @ vals0
            else:
                diag_k.append(kk)
                diag_v.append(vv)
                s0 = ((q @ keys0.transpose(-1, -2)) * scale).masked_fill(~causal, float("-inf"))
                sd = torch.stack([(q * dk).sum(-1) * scale for dk in diag_k], dim=-1)  # [B,H,T,k]
                p = torch.cat([s0, sd], dim=-1).softmax(-1)
                o = p[..., :t] @ vals0
                for j, dv in enumerate(diag_v):
                    o = o + p[..., t + j, None] * dv
            o = o.transpose(1, 2).reshape(b, t, c.heads * c.head_dim)
            normed, hidden = self._post(self.attn.o_proj(o), residual)
            outs.append(self.lm_head(normed))
        return outs


class Eagle3Head(DraftUnroll, nn.Module):
    """The head; ``embed_tokens`` is a frozen copy of the target's (never exported)."""

    def __init__(self, c: HeadConfig, embed_weight: torch.Tensor | None = None):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.hidden)
        if embed_weight is not None:
            self.embed_tokens.weight.data.copy_(embed_weight)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(len(c.aux_layer_ids) * c.target_hidden, c.hidden, bias=False)
        self.midlayer = MidLayer(c)
        self.norm = RMSNorm(c.hidden, c.rms_eps)
        self.lm_head = nn.Linear(c.hidden, c.draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(c.draft_vocab, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(c.vocab, dtype=torch.bool))
        self.register_buffer("draft_ids", torch.arange(c.draft_vocab, dtype=torch.long))  # target ids, not saved
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)

    def set_vocab(self, draft_to_target: torch.Tensor) -> None:
        """``draft_to_target[i]`` = the target id of draft token i (sorted ascending)."""
        ids = draft_to_target.to(torch.long)
        self.draft_ids.copy_(ids)
        self.d2t.copy_(ids - torch.arange(len(ids)))
        self.t2d.zero_()
        self.t2d[ids] = True

    # ----------------------------------------------------------------- forward pieces
    @property
    def attn(self) -> Attention:
        return self.midlayer.self_attn

    def first_hidden(self, aux: torch.Tensor) -> torch.Tensor:
        return self.fc(aux)

    def _pre(self, tokens: torch.Tensor, hidden: torch.Tensor):
        """concat(input_layernorm(embeds), hidden_norm(hidden)) and the residual (the un-normed hidden)."""
        ml = self.midlayer
        e = ml.input_layernorm(self.embed_tokens(tokens))
        return torch.cat([e, ml.hidden_norm(hidden)], dim=-1), hidden

    def _post(self, attn_out: torch.Tensor, residual: torch.Tensor):
        """o_proj output -> (+residual, post norm, MLP, +residual) -> (normed for lm_head, pre-norm fed back)."""
        ml = self.midlayer
        h1 = attn_out + residual
        h2 = ml.mlp(ml.post_attention_layernorm(h1)) + h1
        return self.norm(h2), h2

    def logits_to_target(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Draft-vocab argmax mapped to target token ids (what vLLM proposes)."""
        return self.draft_ids[draft_logits.argmax(-1)]

    def export_state(self) -> dict[str, torch.Tensor]:
        """The tensors vLLM loads, under the names it accepts (see CHECKPOINT_KEYS)."""
        sd = self.state_dict()
        return {k: sd[k].detach().contiguous().clone() for k in CHECKPOINT_KEYS}
