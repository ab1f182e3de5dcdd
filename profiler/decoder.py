"""A decoder built from a Hugging Face config with random weights, for timing verify forwards only.

Latency does not depend on weight values, so no checkpoint is needed: the
offline profiler builds the model's *shape* from its ``config.json`` and times
what a serving engine's verify step runs: B sequences x q new tokens each,
attending causally to a KV prefix of ``context_len`` tokens, through every
layer, then the LM head on every new position.

Written for capture in a CUDA graph (static shapes, no allocation that
depends on data, no host sync). Attention is ``scaled_dot_product_attention``
with grouped-query heads packed into rows (flash kernel for every q, as
FlashInfer/FA3 decode kernels pack GQA) over [prefix ++ new] keys. All layers
share one KV buffer, write their new keys into its tail and read the prefix
in place, as a paged KV cache does (values do not matter; the bytes still
come from HBM, which is what costs), so a 128 x 4096-token prefix fits next
to an 8B model on one GPU. The q new tokens attend to each other without a
causal mask: q-1 extra keys of context+q, timing-equivalent, not exact.

Supported ``architectures``: Llama, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k
norm), Gemma-style configs are refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"qkv_bias": True},
    "Qwen3ForCausalLM": {"qk_norm": True},
}


class UnsupportedArchitecture(ValueError):
    pass


@dataclass(frozen=True)
class DecoderShape:
    architecture: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float
    qkv_bias: bool = False
    qk_norm: bool = False
    name: str = "model"

    @classmethod
    def from_config(cls, cfg: dict, layers: int | None = None, tp: int = 1) -> "DecoderShape":
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED), None)
        if arch is None:
            raise UnsupportedArchitecture(
                f"unsupported architecture {archs or '(none given)'}: the profiler builds "
                f"{', '.join(sorted(SUPPORTED))}")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
                raise UnsupportedArchitecture(f"config field {key!r} is missing or not a positive integer")
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads") or heads
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        if tp < 1 or heads % tp or cfg["intermediate_size"] % tp:
            raise UnsupportedArchitecture(f"tensor parallel size {tp} does not divide heads ({heads}) and "
                                          f"intermediate size ({cfg['intermediate_size']})")
        return cls(architecture=arch, hidden=cfg["hidden_size"], layers=layers or cfg["num_hidden_layers"],
                   heads=heads // tp, kv_heads=max(1, kv // tp), head_dim=head_dim,
                   intermediate=cfg["intermediate_size"] // tp, vocab=cfg["vocab_size"],
                   rope_theta=float(cfg.get("rope_theta", 10000.0)), name=str(cfg.get("_name_or_path") or arch),
                   **SUPPORTED[arch])

    def weight_bytes(self, bytes_per: int = 2) -> int:
        per_layer = (self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
                     + self.heads * self.head_dim * self.hidden + 3 * self.hidden * self.intermediate)
        return bytes_per * (self.layers * per_layer + 2 * self.vocab * self.hidden)


def build(shape: DecoderShape, device, dtype, max_batch: int, max_q: int, context_len: int):
    """A torch module ``forward(B, q)`` that runs one verify step (random weights, shared prefix KV)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator(device=device).manual_seed(0)  # on the GPU: host randn of 15B weights takes minutes

    def w(*s, scale=0.02):
        return (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            h, d = shape.hidden, shape.head_dim
            self.wqkv = w((shape.heads + 2 * shape.kv_heads) * d, h)
            self.bqkv = w((shape.heads + 2 * shape.kv_heads) * d) if shape.qkv_bias else None
            self.wo = w(h, shape.heads * d)
            self.wgu = w(2 * shape.intermediate, h)
            self.wd = w(h, shape.intermediate)
            self.n1 = torch.ones(h, device=device, dtype=dtype)
            self.n2 = torch.ones(h, device=device, dtype=dtype)
            self.qn = torch.ones(d, device=device, dtype=dtype) if shape.qk_norm else None

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [Layer() for _ in range(shape.layers)]
            self.embed = w(shape.vocab, shape.hidden)
            self.head = w(shape.vocab, shape.hidden)
            self.norm = torch.ones(shape.hidden, device=device, dtype=dtype)
            d = shape.head_dim
            # one KV buffer shared by every layer: [max_batch, kv_heads, context + max_q, d]. Each layer
            # writes its q new keys/values into the tail and attends over a view, as a paged KV cache
            # does: no per-layer copy of the prefix (a torch.cat would add B x context x layers of
            # memory traffic that no engine pays)
            self.k_cache = w(max_batch, shape.kv_heads, max(context_len, 0) + max_q, d, scale=1.0)
            self.v_cache = w(max_batch, shape.kv_heads, max(context_len, 0) + max_q, d, scale=1.0)
            inv = 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
            pos = torch.arange(context_len, context_len + max_q, device=device, dtype=torch.float32)
            ang = torch.outer(pos, inv)
            self.cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
            self.sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)

        @staticmethod
        def rms(x, wgt):
            return F.rms_norm(x, (x.shape[-1],), wgt, 1e-5)

        def rope(self, x, q):
            cos, sin = self.cos[:q], self.sin[:q]
            half = x.shape[-1] // 2
            rot = torch.cat([-x[..., half:], x[..., :half]], -1)
            return x * cos + rot * sin

        def attention_input(self, L, x, B: int, q: int):
            """Norm, QKV, RoPE; writes the q new keys/values into the KV buffer; returns the packed queries."""
            d, H, KV = shape.head_dim, shape.heads, shape.kv_heads
            h = self.rms(x, L.n1)
            qkv = F.linear(h, L.wqkv, L.bqkv)
            qh, kh, vh = qkv.split([H * d, KV * d, KV * d], -1)
            qh = qh.view(B, q, H, d).transpose(1, 2)
            kh = kh.view(B, q, KV, d).transpose(1, 2)
            vh = vh.view(B, q, KV, d).transpose(1, 2)
            if L.qn is not None:
                qh, kh = self.rms(qh, L.qn), self.rms(kh, L.qn)
            qh, kh = self.rope(qh, q), self.rope(kh, q)
            self.k_cache[:B, :, context_len:context_len + q].copy_(kh)
            self.v_cache[:B, :, context_len:context_len + q].copy_(vh)
            # grouped-query heads packed as production decode kernels do (FlashInfer / FA3
            # "pack GQA"): the G query heads of one KV head become G*q rows, so SDPA sees equal
            # head counts and no mask, and takes its flash kernel for every q. No causal mask
            # among the q new tokens: q-1 extra keys out of context+q, <2% more attention
            # work at context 512, a timing model, not a numerically exact forward.
            return qh.reshape(B, KV, (H // KV) * q, d)

        def attend(self, qf, B: int, q: int):
            """Attention of the packed queries over the KV prefix and the q new tokens."""
            k = self.k_cache[:B, :, :context_len + q]
            v = self.v_cache[:B, :, :context_len + q]
            return F.scaled_dot_product_attention(qf, k, v)

        def layer_output(self, L, x, a, B: int, q: int):
            """The residual stream after the layer: o-proj of the attention output, then the MLP."""
            H, d = shape.heads, shape.head_dim
            x = x + F.linear(a.reshape(B, H, q, d).transpose(1, 2).reshape(B, q, H * d), L.wo)
            h = self.rms(x, L.n2)
            gate, up = F.linear(h, L.wgu).chunk(2, -1)
            return x + F.linear(F.silu(gate) * up, L.wd)

        def forward(self, ids):
            B, q = ids.shape
            x = F.embedding(ids, self.embed)
            for L in self.layers:
                x = self.layer_output(L, x, self.attend(self.attention_input(L, x, B, q), B, q), B, q)
            return F.linear(self.rms(x, self.norm), self.head)

    return Decoder()


def flops_per_token(shape: DecoderShape, context_len: int) -> float:
    """Matmul FLOPs of one new token (2 x MACs), attention over the prefix included."""
    d = shape.head_dim
    per_layer = 2 * (shape.hidden * (shape.heads + 2 * shape.kv_heads) * d + shape.heads * d * shape.hidden
                     + 3 * shape.hidden * shape.intermediate) + 4 * shape.heads * d * context_len
    return shape.layers * per_layer + 2 * shape.vocab * shape.hidden


def describe(shape: DecoderShape) -> str:
    return (f"{shape.architecture} {shape.layers}L h{shape.hidden} heads {shape.heads}/{shape.kv_heads} "
            f"d{shape.head_dim} ffn {shape.intermediate} vocab {shape.vocab} "
            f"({shape.weight_bytes() / 2 ** 30:.1f} GiB bf16)")


def parse_batch_sizes(text: str) -> list[int]:
    """'1-8,16,32-128:32' -> sorted unique sizes; 'A-B' is every size, 'A-B:S' steps by S."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        step = 1
        if ":" in part:
            part, s = part.split(":", 1)
            step = int(s)
        if "-" in part:
            a, b = (int(x) for x in part.split("-", 1))
            if a < 1 or b < a or step < 1:
                raise ValueError(f"bad batch-size range {part!r}")
            out.update(range(a, b + 1, step))
            out.add(b)
        else:
            v = int(part)
            if v < 1:
                raise ValueError(f"batch size must be >= 1, got {v}")
            out.add(v)
    if not out:
        raise ValueError("no batch sizes given")
    return sorted(out)


def coarse_to_fine(values: list[int]) -> list[int]:
    """Powers of two first (coverage early), then the rest in order: a truncated sweep still spans the range."""
    pow2 = [v for v in values if v & (v - 1) == 0]
    return pow2 + [v for v in values if v not in pow2]

