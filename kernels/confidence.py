"""Draft confidence in one pass over the logits: argmax, max probability, logsumexp (and entropy).

Every draft step of a model drafter (EAGLE, a draft model) ends with logits
over the vocabulary; the policy needs each draft token's probability. Done
naively (softmax in fp32 over 128k tokens, then max) that reads the logits,
writes and re-reads a softmax the size of the logits, and launches several
kernels: more than the draft step itself at large vocabularies.

``draft_confidence_triton`` reads each logit once with an online
max/logsumexp (and sum of p*x for the entropy), never materialising the
softmax; each lane keeps its own running state and the block reduces once
at the end, so the loop streams loads without barriers. Rows are split over several programs when there are too few rows
to fill the GPU; a small second kernel merges the partial results.

Semantics (kernel and twin alike), with ``x = logits / temperature``:
- ``token_ids``: first index of the maximum;
- ``max_prob = exp(max x - logsumexp x)``; ``lse = logsumexp x``;
- ``entropy = lse - sum(softmax(x) * x)`` (``-inf`` entries contribute 0);
- a row whose entries are all ``-inf``: token 0, max_prob 0, lse -inf, entropy 0;
- ``temperature`` must be > 0 (greedy drafting's confidence is its max
  probability at temperature 1).
"""

from __future__ import annotations

import torch

try:  # Triton is optional: the torch twin runs anywhere
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAS_TRITON = False


def _check(logits: torch.Tensor, temperature: float) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [rows, vocab], got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def draft_confidence_torch(logits: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False):
    """Reference twin (plain torch, several kernels; with the entropy it materialises the softmax)."""
    _check(logits, temperature)
    x = logits.float() / temperature if (temperature != 1.0 or logits.dtype != torch.float32) else logits
    vals, ids = x.max(dim=-1)
    lse = torch.logsumexp(x, dim=-1)
    if not return_entropy:
        # the serving path on CPU (every draft step): four ops instead of nine, same results; an all -inf row
        # gives NaN in exp(-inf - -inf), which is its defined max_prob 0
        max_prob = torch.exp(vals - lse).nan_to_num_(0.0)
        return ids.masked_fill_(torch.isneginf(vals), 0), max_prob, lse
    dead = torch.isneginf(vals)
    safe_lse = torch.where(dead, torch.zeros_like(lse), lse)
    max_prob = torch.where(dead, torch.zeros_like(lse), torch.exp(vals - safe_lse))
    ids = torch.where(dead, torch.zeros_like(ids), ids)
    p = torch.exp(x - safe_lse[:, None])
    px = torch.where(torch.isneginf(x), torch.zeros_like(x), p * x)
    ent = torch.where(dead, torch.zeros_like(lse), lse - px.sum(dim=-1))
    return ids, max_prob, lse, ent


if HAS_TRITON:

    @triton.jit
    def _store_row(row, M, S1, S2, best, ids_ptr, prob_ptr, lse_ptr, ent_ptr):
        """One row's outputs from its max M, sum exp(x - M) S1 and sum exp(x - M) * x S2 (all -inf: defined)."""
        dead = S1 == 0.0
        lse = tl.where(dead, float("-inf"), M + tl.log(tl.where(dead, 1.0, S1)))
        tl.store(ids_ptr + row, tl.where(dead, 0, best).to(tl.int64))
        tl.store(prob_ptr + row, tl.where(dead, 0.0, 1.0 / tl.where(dead, 1.0, S1)))
        tl.store(lse_ptr + row, lse)
        tl.store(ent_ptr + row, tl.where(dead, 0.0, lse - S2 / tl.where(dead, 1.0, S1)))

    @triton.jit
    def _finish_split(row, split, M, S1, S2, best, pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr,
                      ids_ptr, prob_ptr, lse_ptr, ent_ptr, NUM_SPLITS: tl.constexpr):
        """A whole row: its outputs; one split of a row: the partial state that _conf_merge combines."""
        if NUM_SPLITS == 1:
            _store_row(row, M, S1, S2, best, ids_ptr, prob_ptr, lse_ptr, ent_ptr)
        else:
            p = row * NUM_SPLITS + split
            tl.store(pm_ptr + p, M)
            tl.store(ps1_ptr + p, S1)
            tl.store(ps2_ptr + p, S2)
            tl.store(pidx_ptr + p, best)

    @triton.jit
    def _conf_partial(x_ptr, stride_row, V, chunk, inv_t,
                      pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr,
                      ids_ptr, prob_ptr, lse_ptr, ent_ptr,
                      NUM_SPLITS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        split = tl.program_id(1)
        start = split * chunk
        end = tl.minimum(start + chunk, V)
        offs = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        s1 = tl.full((), 0.0, tl.float32)
        s2 = tl.full((), 0.0, tl.float32)
        best = tl.full((), 0, tl.int32)
        base = x_ptr + row.to(tl.int64) * stride_row
        for off in range(start, end, BLOCK):
            cols = off + offs
            valid = cols < end
            x = tl.load(base + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
            cmax = tl.max(x, 0)
            carg = tl.argmax(x, 0).to(tl.int32) + off
            new_m = tl.maximum(m, cmax)
            # first index of the maximum: an equal maximum in a later block does not move it
            best = tl.where(cmax > m, carg, best)
            safe = tl.where(new_m == float("-inf"), 0.0, new_m)
            alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - safe))
            live = x != float("-inf")
            e = tl.where(live, tl.exp(x - safe), 0.0)
            s1 = s1 * alpha + tl.sum(e, 0)
            s2 = s2 * alpha + tl.sum(tl.where(live, e * x, 0.0), 0)
            m = new_m
        _finish_split(row, split, m, s1, s2, best, pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr,
                      ids_ptr, prob_ptr, lse_ptr, ent_ptr, NUM_SPLITS)

    @triton.jit
    def _conf_partial_lanes(x_ptr, stride_row, V, chunk, inv_t,
                            pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr,
                            ids_ptr, prob_ptr, lse_ptr, ent_ptr,
                            NUM_SPLITS: tl.constexpr, BLOCK: tl.constexpr, R: tl.constexpr):
        """Per-lane online state, reduced once at the end: the loop has no cross-warp reduction.

        ``_conf_partial`` reduces max, argmax and two sums across the block on every
        iteration (four barriers per BLOCK elements), which keeps too few loads in
        flight. Here each lane owns R consecutive logits per iteration (one vector
        load), folds them into its own running max / first argmax / sums (base-2
        exponents: one exp2 per logit plus one rescale per R logits), and the block
        reduces once after the loop. At bf16 the loop is arithmetic-bound, so the
        rescale shared by R logits is what brings it toward the bandwidth floor.
        """
        LOG2E: tl.constexpr = 1.4426950408889634
        LANES: tl.constexpr = BLOCK // R
        row = tl.program_id(0)
        split = tl.program_id(1)
        start = split * chunk
        end = tl.minimum(start + chunk, V)
        lane = tl.arange(0, LANES)
        offs = lane[:, None] * R + tl.arange(0, R)[None, :]
        m = tl.full((LANES,), float("-inf"), tl.float32)     # running max of x * log2(e)
        s1 = tl.full((LANES,), 0.0, tl.float32)              # sum 2^(x2 - m)
        s2 = tl.full((LANES,), 0.0, tl.float32)              # sum 2^(x2 - m) * x2
        best = tl.full((LANES,), 0, tl.int32)
        base = x_ptr + row.to(tl.int64) * stride_row
        scale = inv_t * LOG2E
        for off in range(start, end, BLOCK):
            cols = off + offs
            x2 = tl.load(base + cols, mask=cols < end, other=float("-inf")).to(tl.float32) * scale
            cm = tl.max(x2, 1)
            carg = tl.argmax(x2, 1).to(tl.int32)
            best = tl.where(cm > m, off + lane * R + carg, best)   # strictly greater: first index per lane
            new_m = tl.maximum(m, cm)
            safe = tl.where(new_m == float("-inf"), 0.0, new_m)
            alpha = tl.exp2(m - safe)                        # exp2(-inf) = 0: empty lanes need no guard
            e = tl.exp2(x2 - safe[:, None])
            s1 = s1 * alpha + tl.sum(e, 1)
            s2 = s2 * alpha + tl.sum(tl.where(x2 == float("-inf"), 0.0, e * x2), 1)
            m = new_m
        M2 = tl.max(m, 0)
        safeM = tl.where(M2 == float("-inf"), 0.0, M2)
        w = tl.exp2(m - safeM)
        S1 = tl.sum(s1 * w, 0)
        S2 = tl.sum(s2 * w, 0) / LOG2E                        # sum p * x in natural units
        first = tl.min(tl.where(m == M2, best, 2147483647), 0)
        first = tl.where(M2 == float("-inf"), 0, first)
        M = M2 / LOG2E                                        # back to natural units for the merge
        _finish_split(row, split, M, S1, S2, first, pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr,
                      ids_ptr, prob_ptr, lse_ptr, ent_ptr, NUM_SPLITS)

    @triton.jit
    def _conf_merge(pm_ptr, ps1_ptr, ps2_ptr, pidx_ptr, ids_ptr, prob_ptr, lse_ptr, ent_ptr,
                    NUM_SPLITS: tl.constexpr, SPLIT_BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, SPLIT_BLOCK)
        ok = offs < NUM_SPLITS
        p = row * NUM_SPLITS + offs
        m = tl.load(pm_ptr + p, mask=ok, other=float("-inf"))
        s1 = tl.load(ps1_ptr + p, mask=ok, other=0.0)
        s2 = tl.load(ps2_ptr + p, mask=ok, other=0.0)
        idx = tl.load(pidx_ptr + p, mask=ok, other=0)
        M = tl.max(m, 0)
        safe = tl.where(M == float("-inf"), 0.0, M)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - safe))
        S1 = tl.sum(s1 * w, 0)
        S2 = tl.sum(s2 * w, 0)
        # splits are in vocabulary order: the first split holding the maximum holds its first index
        first = tl.min(tl.where((m == M) & ok, offs, SPLIT_BLOCK), 0)
        best = tl.sum(tl.where(offs == first, idx, 0), 0)
        _store_row(row, M, S1, S2, best, ids_ptr, prob_ptr, lse_ptr, ent_ptr)


def _num_splits(rows: int, vocab: int, block: int, device: torch.device, programs_per_sm: int = 4) -> int:
    if device.type != "cuda":
        return max(1, min(4, triton.cdiv(vocab, block)))  # interpreter: exercise the merge path cheaply
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(programs_per_sm * sms, max(rows, 1))
    return int(max(1, min(want, triton.cdiv(vocab, block))))


def draft_confidence_triton(logits: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False,
                            block: int | None = None, num_splits: int | None = None, variant: str = "lanes",
                            num_warps: int | None = None, programs_per_sm: int = 4, per_lane: int = 8):
    """The fused kernel (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    ``variant``: "lanes" (per-lane state, one reduction at the end; the default)
    or "blocks" (reduces every BLOCK; kept for comparison in the GPU benchmark).
    ``programs_per_sm`` sets how finely rows are split when there are few rows;
    ``per_lane`` is how many consecutive logits each lane folds per iteration ("lanes").
    Defaults (lanes, block 4096, 8 warps, 4 programs/SM, 8 per lane) are the fastest
    of the 38 configurations swept on an H100 at [256, 128256] bf16
    (benchmarks/results/kernels_nvidia_h100_80gb_hbm3.json, "draft_confidence_sweep").
    """
    if variant not in ("lanes", "blocks"):
        raise ValueError(f"variant must be 'lanes' or 'blocks', got {variant!r}")
    if block is None:
        block = 4096 if variant == "lanes" else 2048
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    _check(logits, temperature)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    rows, vocab = logits.shape
    dev = logits.device
    splits = num_splits or _num_splits(rows, vocab, block, dev, programs_per_sm)
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    splits = triton.cdiv(vocab, chunk)
    ids = torch.empty(rows, dtype=torch.int64, device=dev)
    prob = torch.empty(rows, dtype=torch.float32, device=dev)
    lse = torch.empty(rows, dtype=torch.float32, device=dev)
    ent = torch.empty(rows, dtype=torch.float32, device=dev)
    if splits > 1:
        pm = torch.empty(rows * splits, dtype=torch.float32, device=dev)
        ps1 = torch.empty_like(pm)
        ps2 = torch.empty_like(pm)
        pidx = torch.empty(rows * splits, dtype=torch.int32, device=dev)
    else:
        pm = ps1 = ps2 = prob
        pidx = ids
    if rows:
        warps = num_warps or (8 if dev.type == "cuda" else 1)
        args = (logits, logits.stride(0), vocab, chunk, 1.0 / float(temperature), pm, ps1, ps2, pidx, ids, prob,
                lse, ent)
        if variant == "lanes":
            if per_lane < 1 or per_lane & (per_lane - 1) or block % per_lane:
                raise ValueError(f"per_lane must be a power of two dividing block, got {per_lane} (block {block})")
            _conf_partial_lanes[(rows, splits)](*args, NUM_SPLITS=splits, BLOCK=block, R=per_lane, num_warps=warps)
        else:
            _conf_partial[(rows, splits)](*args, NUM_SPLITS=splits, BLOCK=block, num_warps=warps)
        if splits > 1:
            _conf_merge[(rows,)](pm, ps1, ps2, pidx, ids, prob, lse, ent, NUM_SPLITS=splits,
                                 SPLIT_BLOCK=triton.next_power_of_2(splits))
    out = (ids, prob, lse)
    return out + (ent,) if return_entropy else out


def draft_confidence(logits: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False):
    """Dispatcher: the Triton kernel on CUDA tensors, the torch twin elsewhere."""
    if logits.is_cuda and HAS_TRITON:
        return draft_confidence_triton(logits, temperature, return_entropy)
    return draft_confidence_torch(logits, temperature, return_entropy)
