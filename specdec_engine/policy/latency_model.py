"""What a verify forward of N tokens over B sequences costs on this GPU.

The measured table is the truth. On an H100 the verify latency depends on the
number of sequences as well as on tokens (attention reads every sequence's KV
prefix) and it is not monotone in tokens (cuBLAS switches kernels at some
sizes: a 64-sequence batch can be slower at 448 tokens than at 512). So
:class:`LatencyModel` keeps the per-(batch, tokens) medians and interpolates
between them; it never smooths a measured spike away.

The TileSpec piecewise-linear fit (:func:`fit_segments`, jumps detected at a
relative threshold, 15% by default) is kept beside the table for three uses
only: extrapolation beyond the measured token range, the plots, and the list
of tile boundaries an operator reads.

Usage::

    model = LatencyModel.fit(batch=[1, 1, 8], tokens=[1, 9, 72], latency_ms=[1.4, 1.5, 1.7])
    model.predict(4, 20)          # ms, interpolated in tokens, then in batch
    model.curve(4, 64)[20]        # the same value, from a cached dense vector
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

DEFAULT_JUMP_THRESHOLD = 0.15
LATENCY_MODEL_FILE = "latency_model.npz"


class LatencyModelError(ValueError):
    """Bad samples handed to the latency model (the message names the problem)."""


@dataclass(frozen=True)
class Segments:
    """Piecewise-linear latency in tokens: segment i covers [boundaries[i], boundaries[i+1])."""

    boundaries: np.ndarray  # token count where each segment starts, ascending
    slopes: np.ndarray  # ms per token
    intercepts: np.ndarray  # ms

    def __call__(self, tokens) -> np.ndarray:
        n = np.asarray(tokens, dtype=np.float64)
        idx = np.searchsorted(self.boundaries, n, side="right") - 1
        idx = np.clip(idx, 0, len(self.boundaries) - 1)
        return self.intercepts[idx] + self.slopes[idx] * n

    @property
    def jump_boundaries(self) -> list[int]:
        """Token counts where a new tile starts (the first segment's start excluded)."""
        return [int(b) for b in self.boundaries[1:]]


def _median_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    uniq, starts = np.unique(k, return_index=True)
    meds = np.array([np.median(part) for part in np.split(v, starts[1:])])
    return uniq, meds


def fit_segments(tokens, latency_ms, jump_threshold: float = DEFAULT_JUMP_THRESHOLD) -> Segments:
    """Fit the TileSpec piecewise-linear model on the median latency per token count.

    A new segment starts where the measured median departs from the current
    segment's linear extrapolation by more than ``jump_threshold`` (relative),
    up or down. Comparing with the extrapolation rather than with the previous
    point keeps a coarse grid on a steady slope from being cut at every sample.
    A segment of one point (an isolated spike) keeps the slope of the segment
    before it and passes through its point.
    """
    if not 0 < jump_threshold < 10:
        raise LatencyModelError(f"jump_threshold must be in (0, 10), got {jump_threshold}")
    n, lat = _median_by_key(np.asarray(tokens, np.float64), np.asarray(latency_ms, np.float64))
    if len(n) == 1:
        return Segments(n.copy(), np.zeros(1), lat.copy())
    global_slope = max(0.0, float(np.polyfit(n, lat, 1)[0]))
    starts = [0]
    for i in range(1, len(n)):
        seg = slice(starts[-1], i)
        if i - starts[-1] >= 2:
            slope = float(np.polyfit(n[seg], lat[seg], 1)[0])
        else:
            slope = global_slope
        expected = lat[i - 1] + slope * (n[i] - n[i - 1])
        if expected <= 0 or abs(lat[i] - expected) / expected > jump_threshold:
            starts.append(i)
    bounds, slopes, inters = [], [], []
    ends = starts[1:] + [len(n)]
    for s, e in zip(starts, ends):
        if e - s >= 2:
            slope, inter = np.polyfit(n[s:e], lat[s:e], 1)
        else:
            slope = slopes[-1] if slopes else global_slope
            inter = lat[s] - slope * n[s]
        bounds.append(n[s])
        slopes.append(float(slope))
        inters.append(float(inter))
    return Segments(np.array(bounds), np.array(slopes), np.array(inters))


def batch_slope_ms(batch: np.ndarray, tokens: np.ndarray, latency_ms: np.ndarray) -> float:
    """Per-sequence latency at fixed tokens (ms), from a least-squares fit lat ~ a + c*N + beta*B.

    At a fixed token count a batch of more sequences costs more (attention
    reads each sequence's KV prefix). Pooling batch sizes without removing
    that would show batch changes as tile jumps, so segments are fitted on
    ``lat - beta * (B - 1)``. Clipped at 0; 0 when only one batch size exists.
    """
    b = np.asarray(batch, np.float64)
    if len(np.unique(b)) < 2:
        return 0.0
    x = np.stack([np.ones_like(b), np.asarray(tokens, np.float64), b], axis=1)
    coef = np.linalg.lstsq(x, np.asarray(latency_ms, np.float64), rcond=None)[0]
    return max(0.0, float(coef[2]))


def _validate(batch: np.ndarray, tokens: np.ndarray, lat: np.ndarray) -> None:
    if not (len(batch) == len(tokens) == len(lat)):
        raise LatencyModelError(
            f"batch, tokens and latency must have the same length ({len(batch)}, {len(tokens)}, {len(lat)})")
    if len(lat) == 0:
        raise LatencyModelError("no latency samples")
    for name, arr in (("batch size", batch), ("token count", tokens), ("latency", lat)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise LatencyModelError(f"{name} is NaN or infinite at sample {int(np.argmax(bad))}")
    if (lat <= 0).any():
        i = int(np.argmax(lat <= 0))
        raise LatencyModelError(f"latency must be positive, got {lat[i]} at sample {i}")
    if (batch < 1).any():
        i = int(np.argmax(batch < 1))
        raise LatencyModelError(f"batch size must be >= 1, got {batch[i]} at sample {i}")
    if (tokens < batch).any():
        i = int(np.argmax(tokens < batch))
        raise LatencyModelError(
            f"token count ({tokens[i]}) below batch size ({batch[i]}) at sample {i}: every sequence verifies >= 1 token")
    if len(np.unique(tokens)) < 2:
        raise LatencyModelError(
            f"need at least 2 distinct token counts to fit a latency model, got {len(np.unique(tokens))}")


class LatencyModel:
    """Measured verify latency L(batch, tokens) in ms, interpolated, with TileSpec segments.

    Prediction at (B, N):
      1. for each measured batch size b, interpolate linearly in N between that
         batch size's measured medians; outside its measured token range, move
         from the nearest measured point along the fitted segments' shape;
      2. interpolate linearly in B between the two measured batch sizes around
         B; above the largest, extrapolate along the last two batch sizes'
         per-sequence slope (never negative); below the smallest, clamp.
    """

    def __init__(self, batch_sizes, token_counts, latencies_ms,
                 jump_threshold: float = DEFAULT_JUMP_THRESHOLD,
                 samples: np.ndarray | None = None,
                 segments: Segments | None = None):
        self.batch_sizes = np.asarray(batch_sizes, dtype=np.int64)
        self.token_counts = np.asarray(token_counts, dtype=np.int64)
        self.latencies_ms = np.asarray(latencies_ms, dtype=np.float64)
        _validate(self.batch_sizes.astype(np.float64), self.token_counts.astype(np.float64), self.latencies_ms)
        self.jump_threshold = float(jump_threshold)
        # raw samples [n, 3] (batch, tokens, ms) when known; the medians above are what predicts
        self.samples = samples if samples is not None else np.stack(
            [self.batch_sizes, self.token_counts, self.latencies_ms], axis=1).astype(np.float64)
        self.batch_slope = batch_slope_ms(self.batch_sizes, self.token_counts, self.latencies_ms)
        self.segments = segments or fit_segments(self.token_counts, self._batch_adjusted(), jump_threshold)
        self._per_batch: list[tuple[int, np.ndarray, np.ndarray]] = []
        for b in np.unique(self.batch_sizes):
            sel = self.batch_sizes == b
            n, lat = self.token_counts[sel].astype(np.float64), self.latencies_ms[sel]
            order = np.argsort(n)
            self._per_batch.append((int(b), n[order], lat[order]))
        self._measured_b = np.array([b for b, _, _ in self._per_batch], dtype=np.float64)
        self._floor_ms = float(self.latencies_ms.min()) * 0.5
        self._curves: OrderedDict[int, np.ndarray] = OrderedDict()

    def _batch_adjusted(self) -> np.ndarray:
        """Latencies with attention's per-sequence cost removed (as if B=1), for the segment fit."""
        return self.latencies_ms - self.batch_slope * (self.batch_sizes - 1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, batch, tokens, latency_ms, jump_threshold: float = DEFAULT_JUMP_THRESHOLD) -> "LatencyModel":
        """Build from raw samples (repeats allowed): medians per (batch, tokens) become the table."""
        b = np.asarray(batch, dtype=np.float64).ravel()
        n = np.asarray(tokens, dtype=np.float64).ravel()
        lat = np.asarray(latency_ms, dtype=np.float64).ravel()
        _validate(b, n, lat)
        if (b != np.round(b)).any() or (n != np.round(n)).any():
            raise LatencyModelError("batch sizes and token counts must be integers")
        key = b * (n.max() + 1) + n
        uniq, meds = _median_by_key(key, lat)
        ub = np.floor(uniq / (n.max() + 1)).astype(np.int64)
        un = (uniq - ub * (n.max() + 1)).astype(np.int64)
        samples = np.stack([b, n, lat], axis=1)
        return cls(ub, un, meds, jump_threshold=jump_threshold, samples=samples)

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[int, int, float]],
                     jump_threshold: float = DEFAULT_JUMP_THRESHOLD) -> "LatencyModel":
        arr = np.asarray(list(samples), dtype=np.float64).reshape(-1, 3)
        return cls.fit(arr[:, 0], arr[:, 1], arr[:, 2], jump_threshold)

    # ------------------------------------------------------------------ prediction
    def _per_batch_curve(self, idx: int, n: np.ndarray) -> np.ndarray:
        _, ns, ls = self._per_batch[idx]
        out = np.interp(n, ns, ls)
        hi = n > ns[-1]
        if hi.any():
            grow = self.segments(n[hi]) - self.segments(ns[-1])
            out[hi] = ls[-1] + np.maximum(grow, 0.0)
        lo = n < ns[0]
        if lo.any():
            drop = self.segments(ns[0]) - self.segments(n[lo])
            out[lo] = np.maximum(ls[0] - np.maximum(drop, 0.0), self._floor_ms)
        return out

    def _predict_vec(self, batch: float, n: np.ndarray) -> np.ndarray:
        mb = self._measured_b
        if batch <= mb[0]:
            return self._per_batch_curve(0, n)
        if batch >= mb[-1]:
            last = self._per_batch_curve(len(mb) - 1, n)
            if batch == mb[-1] or len(mb) == 1:
                return last
            prev = self._per_batch_curve(len(mb) - 2, n)
            per_seq = np.maximum((last - prev) / (mb[-1] - mb[-2]), 0.0)
            return last + per_seq * (batch - mb[-1])
        hi = int(np.searchsorted(mb, batch, side="left"))
        if mb[hi] == batch:
            return self._per_batch_curve(hi, n)
        lo = hi - 1
        w = (batch - mb[lo]) / (mb[hi] - mb[lo])
        return (1 - w) * self._per_batch_curve(lo, n) + w * self._per_batch_curve(hi, n)

    def predict(self, batch, tokens):
        """Latency in ms of one verify forward of ``tokens`` tokens over ``batch`` sequences."""
        n = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
        if np.ndim(batch) == 0:
            out = self._predict_vec(float(batch), n)
        else:
            b = np.broadcast_to(np.asarray(batch, dtype=np.float64), n.shape)
            out = np.array([self._predict_vec(float(bi), np.array([ni]))[0] for bi, ni in zip(b.ravel(), n.ravel())])
        return float(out[0]) if np.ndim(tokens) == 0 and np.ndim(batch) == 0 else out.reshape(n.shape)

    def curve(self, batch: int, max_tokens: int) -> np.ndarray:
        """Dense ``L(batch, n)`` for n = 0..at least max_tokens (index = token count), cached.

        The selector looks up every feasible total each step; a vector per
        batch size turns that into one gather. The vector may be longer than
        asked (it grows by doubling), so index it, do not take its length.
        """
        b = int(batch)
        cur = self._curves.get(b)
        if cur is None or len(cur) <= max_tokens:
            size = max(64, 1 << int(max_tokens).bit_length())
            n = np.arange(size + 1, dtype=np.float64)
            cur = self._predict_vec(float(b), np.maximum(n, 1.0))
            cur.setflags(write=False)
            self._curves[b] = cur
            if len(self._curves) > 4096:
                self._curves.popitem(last=False)
        return cur

    # ------------------------------------------------------------------ quality
    def mape(self, samples: np.ndarray | None = None) -> float:
        """Mean absolute percentage error (%) of the model on samples (default: those it was fitted on)."""
        s = self.samples if samples is None else np.asarray(samples, dtype=np.float64).reshape(-1, 3)
        pred = np.array([self._predict_vec(b, np.array([n]))[0] for b, n, _ in s])
        return float(np.mean(np.abs(pred - s[:, 2]) / s[:, 2]) * 100.0)

    def segment_mape(self) -> float:
        """MAPE (%) of the piecewise-linear segments alone on the batch-adjusted per-token-count medians."""
        n, lat = _median_by_key(self.token_counts.astype(np.float64), self._batch_adjusted())
        return float(np.mean(np.abs(self.segments(n) - lat) / lat) * 100.0)

    def describe(self) -> dict:
        seg = self.segments
        return {
            "n_points": int(len(self.latencies_ms)),
            "n_samples": int(len(self.samples)),
            "batch_sizes": sorted({int(b) for b in self.batch_sizes}),
            "token_range": [int(self.token_counts.min()), int(self.token_counts.max())],
            "boundaries": seg.jump_boundaries,
            "segments": [
                {"start": int(b), "slope_ms_per_token": round(float(s), 6), "intercept_ms": round(float(i), 4)}
                for b, s, i in zip(seg.boundaries, seg.slopes, seg.intercepts)
            ],
            "jump_threshold": self.jump_threshold,
            "batch_slope_ms_per_seq": round(self.batch_slope, 6),
            "mape": round(self.mape(), 4),
            "segment_mape": round(self.segment_mape(), 4),
        }

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "batch_sizes": self.batch_sizes,
            "token_counts": self.token_counts,
            "latencies_ms": self.latencies_ms,
            "samples": self.samples,
            "boundaries": self.segments.boundaries,
            "slopes": self.segments.slopes,
            "intercepts": self.segments.intercepts,
            "jump_threshold": np.array(self.jump_threshold),
        }

    @classmethod
    def from_arrays(cls, arrs) -> "LatencyModel":
        seg = Segments(np.asarray(arrs["boundaries"], np.float64), np.asarray(arrs["slopes"], np.float64),
                       np.asarray(arrs["intercepts"], np.float64))
        samples = np.asarray(arrs["samples"], np.float64) if "samples" in arrs else None
        return cls(arrs["batch_sizes"], arrs["token_counts"], arrs["latencies_ms"],
                   jump_threshold=float(arrs["jump_threshold"]) if "jump_threshold" in arrs else DEFAULT_JUMP_THRESHOLD,
                   samples=samples, segments=seg)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            np.savez(f, **self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyModel":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})
