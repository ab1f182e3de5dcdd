"""GPU-resident K selection: the policy core's selector in one graph-capturable launch.

On the GPU-resident paths (vLLM async scheduling / model runner V2, SGLang)
the draft confidences live on the device and K must be chosen without a
host round trip, inside CUDA graphs. Sorting, scanning and gathering on the
host would cost more than the speculation it steers.

``select_k_triton`` runs in one program: rank every candidate draft by
calibrated P(prefix accepted) (16-bit keys from the float32 bits, ties by
request-major index: exactly ``specdec_engine.policy.selector.rank_keys``),
bitonic-sort the packed (key, index) words, scan the expected tokens in
float64, look up the latency of every feasible token total, keep the best
total (per-step goodput, or the Dinkelbach objective ``E - rate * T`` when a
long-run ``rate`` is given) and count each request's chosen drafts. Inputs
and outputs are device tensors of fixed shape; nothing is read back.

Inputs (kernel and twin alike):
- ``cum_conf`` [B, K] float32: calibrated P(drafts 0..i of request r accepted);
  NaN or negative = no such draft (pad unused rows this way to keep shapes fixed);
- ``n_avail`` [B] int32 or None: cap on each request's drafts;
- ``lat_table`` [T] float64: predicted step time (ms) for a forward of n
  tokens, indexed by n, covering ``base + B*K`` (see
  ``KSelector.latency_table``: it includes the engine's overhead and scale);
- ``base`` = extra prefill tokens + B; ``draft_cost`` (ms, added when any
  draft is verified); ``rate`` (tokens/ms) or NaN for the per-step ratio.
Outputs: ``k`` [B] int32 and ``info`` [3] float64 = (drafts chosen, expected
tokens, predicted ms).
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

ONE_BITS = 0x3F800000
RANK_SHIFT = 14
MISSING_KEY = 65535


def _check(cum_conf, n_avail, lat_table, base):
    if cum_conf.dim() != 2:
        raise ValueError(f"cum_conf must be [B, K], got shape {tuple(cum_conf.shape)}")
    B, K = cum_conf.shape
    if lat_table.dim() != 1 or lat_table.numel() < base + B * K + 1:
        raise ValueError(f"lat_table must cover token totals 0..base+B*K={base + B * K}, "
                         f"got {lat_table.numel()} entries")
    if n_avail is not None and n_avail.shape != (B,):
        raise ValueError(f"n_avail must be [B]={B}, got {tuple(n_avail.shape)}")


def select_k_torch(cum_conf: torch.Tensor, lat_table: torch.Tensor, base: int, n_avail: torch.Tensor | None = None,
                   draft_cost: float = 0.0, rate: float = float("nan")):
    """Reference twin: the same algorithm in torch ops (device-resident, no host sync)."""
    _check(cum_conf, n_avail, lat_table, base)
    B, K = cum_conf.shape
    dev = cum_conf.device
    c = cum_conf.to(torch.float64)
    c = torch.where(torch.isnan(c), torch.full_like(c, -1.0), c)
    c = torch.cummin(c, dim=1).values
    pos = torch.arange(K, device=dev)[None, :]
    if n_avail is not None:
        c = torch.where(pos >= n_avail.to(dev)[:, None], torch.full_like(c, -1.0), c)
    flat = c.reshape(-1)
    p32 = flat.clamp(0.0, 1.0).to(torch.float32)
    key = ((ONE_BITS - p32.view(torch.int32)).to(torch.int64) >> RANK_SHIFT) + 1
    key = torch.where(flat < 0, torch.full_like(key, MISSING_KEY), key)
    n = flat.numel()
    bits = max(1, (n - 1).bit_length())
    packed = (key << bits) | torch.arange(n, device=dev)
    order = torch.argsort(packed)
    avail = (flat >= 0).sum()
    rank = torch.arange(n, device=dev)
    probs = torch.where(rank < avail, flat[order], torch.zeros_like(flat))
    expected = B + torch.cumsum(probs, 0)
    lat = lat_table.to(torch.float64)
    total = lat[(base + 1 + rank).clamp(max=lat.numel() - 1)] + draft_cost
    use_rate = not math.isnan(rate)
    score = expected - rate * total if use_rate else expected / total
    score = torch.where(rank < avail, score, torch.full_like(score, float("-inf")))
    score0 = B - rate * lat[base:base + 1] if use_rate else B / lat[base:base + 1]
    # everything below stays on the device: no .item(), no indexing by a tensor scalar (both sync or
    # break CUDA-graph capture), no host-built tensors
    j = torch.argmax(score).view(1)
    best = score.gather(0, j)
    take = best > score0
    n_best = torch.where(take, j + 1, torch.zeros_like(j))
    thresh = packed.gather(0, order.gather(0, j))
    chosen = take & (packed <= thresh) & (flat >= 0)
    k = chosen.reshape(B, K).sum(dim=1).to(torch.int32)
    e_best = torch.where(take, expected.gather(0, j), torch.full_like(best, float(B)))
    lat0 = lat[base:base + 1]
    t_best = torch.where(take, total.gather(0, j), lat0)
    info = torch.cat([n_best.to(torch.float64), e_best, t_best])
    return k, info


if HAS_TRITON:

    @triton.jit
    def _min_combine(a, b):
        return tl.minimum(a, b)

    @triton.jit
    def _select_k_kernel(cum_ptr, stride_b, navail_ptr, lat_ptr, lat_len, scratch_ptr, k_ptr, info_ptr,
                         B, K, base, draft_cost, rate,
                         HAS_NAVAIL: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                         IDX_BITS: tl.constexpr):
        rb = tl.arange(0, BLOCK_B)[:, None]
        ck = tl.arange(0, BLOCK_K)[None, :]
        valid = (rb < B) & (ck < K)
        c = tl.load(cum_ptr + rb * stride_b + ck, mask=valid, other=-1.0).to(tl.float64)
        c = tl.where(c != c, -1.0, c)
        c = tl.associative_scan(c, 1, _min_combine)
        if HAS_NAVAIL:
            na = tl.load(navail_ptr + rb, mask=rb < B, other=0)
            c = tl.where(ck >= na, -1.0, c)
        c = tl.where(valid, c, -1.0)
        flat_idx = rb * K + ck
        p32 = tl.minimum(tl.maximum(c, 0.0), 1.0).to(tl.float32)
        key = ((1065353216 - p32.to(tl.int32, bitcast=True)) >> 14) + 1
        key = tl.where(c < 0, 65535, key)
        packed = (key << IDX_BITS) | tl.where(valid, flat_idx, (1 << IDX_BITS) - 1)
        # probabilities by flat index, for the gather after the sort
        tl.store(scratch_ptr + flat_idx, c, mask=valid)
        tl.debug_barrier()
        N: tl.constexpr = BLOCK_B * BLOCK_K
        srt = tl.sort(tl.reshape(packed, [N]))
        rank = tl.arange(0, N)
        avail = tl.sum(tl.sum((c >= 0).to(tl.int32), 1), 0)
        src = srt & ((1 << IDX_BITS) - 1)
        live = rank < avail
        probs = tl.load(scratch_ptr + src, mask=live, other=0.0)
        probs = tl.where(live, probs, 0.0)
        expected = tl.cumsum(probs, 0) + B
        tot_idx = tl.minimum(base + 1 + rank, lat_len - 1)
        total = tl.load(lat_ptr + tot_idx).to(tl.float64) + draft_cost
        use_rate = rate == rate
        score = tl.where(use_rate, expected - rate * total, expected / total)
        score = tl.where(live, score, float("-inf"))
        lat0 = tl.load(lat_ptr + base).to(tl.float64)
        score0 = tl.where(use_rate, B - rate * lat0, B / lat0)
        best = tl.max(score, 0)
        j = tl.argmax(score, 0)
        take = best > score0
        thresh = tl.sum(tl.where(rank == j, srt, 0), 0)
        chosen = (packed <= thresh) & (c >= 0)
        k = tl.where(take, tl.sum(chosen.to(tl.int32), 1), 0)
        rows = tl.arange(0, BLOCK_B)
        tl.store(k_ptr + rows, k, mask=rows < B)
        e_best = tl.sum(tl.where(rank == j, expected, 0.0), 0)
        t_best = tl.sum(tl.where(rank == j, total, 0.0), 0)
        tl.store(info_ptr, tl.where(take, j + 1, 0).to(tl.float64))
        tl.store(info_ptr + 1, tl.where(take, e_best, B * 1.0))
        tl.store(info_ptr + 2, tl.where(take, t_best, lat0))


def select_k_triton(cum_conf: torch.Tensor, lat_table: torch.Tensor, base: int, n_avail: torch.Tensor | None = None,
                    draft_cost: float = 0.0, rate: float = float("nan"), out: tuple | None = None):
    """The one-launch kernel (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    ``out`` = (k [B] int32, info [3] float64, scratch [B*K] float64) preallocated for graph capture.
    """
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    _check(cum_conf, n_avail, lat_table, base)
    B, K = cum_conf.shape
    dev = cum_conf.device
    if cum_conf.stride(1) != 1:
        cum_conf = cum_conf.contiguous()
    block_b = triton.next_power_of_2(max(B, 1))
    block_k = triton.next_power_of_2(max(K, 1))
    idx_bits = max(1, (block_b * block_k - 1).bit_length())
    if block_b * block_k > 1 << 15:
        raise ValueError(f"select_k_triton handles B*K up to 32768 candidates, got {B}x{K}")
    if out is None:
        out = (torch.empty(B, dtype=torch.int32, device=dev), torch.empty(3, dtype=torch.float64, device=dev),
               torch.empty(max(B * K, 1), dtype=torch.float64, device=dev))
    k, info, scratch = out
    na = n_avail.to(torch.int32) if n_avail is not None else k
    _select_k_kernel[(1,)](cum_conf, cum_conf.stride(0), na, lat_table, lat_table.numel(), scratch, k, info,
                           B, K, int(base), float(draft_cost), float(rate),
                           HAS_NAVAIL=n_avail is not None, BLOCK_B=block_b, BLOCK_K=block_k, IDX_BITS=idx_bits,
                           num_warps=4 if dev.type == "cuda" else 1)
    return k, info


def select_k(cum_conf: torch.Tensor, lat_table: torch.Tensor, base: int, n_avail: torch.Tensor | None = None,
             draft_cost: float = 0.0, rate: float = float("nan")):
    """Dispatcher: the Triton kernel on CUDA tensors, the torch twin elsewhere."""
    if cum_conf.is_cuda and HAS_TRITON:
        return select_k_triton(cum_conf, lat_table, base, n_avail, draft_cost, rate)
    return select_k_torch(cum_conf, lat_table, base, n_avail, draft_cost, rate)
