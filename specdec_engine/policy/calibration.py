"""Draft confidence -> P(accept), monotone, learned online from the engine's own outcomes.

A draft's raw confidence (EAGLE's cumulative path probability, or for prompt
lookup a score from match length and the request's own history) ranks tokens
well but is rarely a probability: drafters are over-confident, and ngram
scores are not probabilities at all. The selector needs real probabilities to
weigh expected tokens against milliseconds, so every score goes through this
map.

The map is a weighted isotonic regression (pool-adjacent-violators) over
fixed score bins, seeded by a prior (pseudo-counts) and updated from observed
(score, accepted) pairs. Bins keep memory flat however long the engine runs;
isotonic keeps it monotone, so a non-increasing sequence of cumulative
confidences stays non-increasing after calibration (the selector relies on
that to take draft tokens in prefix order).

Error is reported two ways: ``ece`` (expected calibration error of the map on
the pairs it has seen, in-sample) and ``ece_prequential`` (each pair scored
by the map *before* it learned from it: an honest out-of-sample number), with
``ece_raw`` for the uncalibrated confidence as the baseline.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

CALIBRATION_FILE = "calibration.npz"


class CalibrationError(ValueError):
    """Bad calibration input (the message names it)."""


def isotonic_increasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted pool-adjacent-violators: the non-decreasing fit closest in weighted L2."""
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist()):
        vals.append(v)
        wts.append(w)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w2 = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w2 if w2 > 0 else (vals[-2] + vals[-1]) / 2
            s2 = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v2, w2, s2
    return np.repeat(np.array(vals), sizes)


def isotonic_increasing_rows(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`isotonic_increasing` of every row of ``values`` [P, n] at once (weights all > 0).

    The isotonic fit at i is ``max over j <= i of min over k >= i`` of the weighted mean of values j..k (the
    min-max formula of isotonic regression), read off prefix sums: a few array operations on [P, n, n]
    instead of P Python loops. Why: a refit of the 28 maps of a K_max=7 engine took ~0.8 ms with the loops,
    on the engine's step path early in serving (every step until 1,000 pairs). Equal to the pool-adjacent-
    violators result up to rounding (tested).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    n = v.shape[1]
    zeros = np.zeros((v.shape[0], 1))
    sw = np.concatenate([zeros, np.cumsum(w, axis=1)], axis=1)          # [P, n+1]
    swv = np.concatenate([zeros, np.cumsum(w * v, axis=1)], axis=1)
    j = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (swv[:, None, 1:] - swv[:, :n, None]) / (sw[:, None, 1:] - sw[:, :n, None])  # [P, j, k]
    mean = np.where(k >= j, mean, np.inf)
    suffix_min = np.minimum.accumulate(mean[:, :, ::-1], axis=2)[:, :, ::-1]            # min over k >= i
    return np.where(j <= k, suffix_min, -np.inf).max(axis=1)                             # max over j <= i


def _ece(weights: np.ndarray, predicted: np.ndarray, observed: np.ndarray) -> float:
    total = weights.sum()
    if total <= 0:
        return float("nan")
    return float(np.sum(weights * np.abs(predicted - observed)) / total)


class Calibration:
    """Monotone map from a confidence score in [0, 1] (and a draft position) to P(accept).

    ``prior`` gives the prior P(accept) as a function of the score (default:
    the score itself, i.e. trust the drafter until shown otherwise) and
    ``prior_strength`` how many pseudo-observations per bin it is worth.

    With ``n_positions`` > 1 each draft position (0-based; later positions
    share the last map) gets its own monotone map, shrunk toward the map
    pooled over all positions. Acceptance is not independent across
    positions: prompt-lookup drafts are accepted in runs (a copied region is
    accepted whole), so the same cumulative score means something different
    at depth 1 and at depth 6. Positions with little data follow the pooled
    map until they have their own evidence.
    """

    TABLE = 1024  # lookup resolution of the fitted maps
    # Once the maps hold REFIT_WARM_PAIRS pairs, the serving path (``__call__``, every engine step) refits only
    # after REFIT_MIN_PAIRS new pairs, or REFIT_SHARE of those already fitted, or REFIT_MAX_AGE_S: one refit
    # (an isotonic fit and a lookup table per group and position) costs ~1.4 ms with 28 maps on one CPU core,
    # which was 5-10% of a step of the tiny models.
    # A map a few dozen pairs stale changes nothing the selector could see; reports (``p_accept``, ECE,
    # saving) always refit.
    REFIT_MIN_PAIRS = 64
    REFIT_WARM_PAIRS = 1000  # until the maps have seen this many pairs, every new pair matters: refit each call
    REFIT_SHARE = 0.02
    REFIT_MAX_AGE_S = 2.0

    def __init__(self, n_bins: int = 20, prior: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None,
                 prior_strength: float = 4.0, n_positions: int = 1):
        if n_bins < 2:
            raise CalibrationError(f"n_bins must be >= 2, got {n_bins}")
        if n_positions < 1:
            raise CalibrationError(f"n_positions must be >= 1, got {n_positions}")
        if prior_strength < 0:
            raise CalibrationError(f"prior_strength must be >= 0, got {prior_strength}")
        self.bin_edges = np.linspace(0.0, 1.0, n_bins + 1)
        self.centers = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2
        # where each lookup-table score falls between bin centres (interpolation index and weight; see _refit)
        grid = np.linspace(0.0, 1.0, self.TABLE + 1)
        lo = np.clip(np.searchsorted(self.centers, grid, side="right") - 1, 0, n_bins - 2)
        self._interp_lo = lo
        self._interp_t = np.clip((grid - self.centers[lo]) / (self.centers[lo + 1] - self.centers[lo]), 0.0, 1.0)
        if prior is None:
            prior_p = self.centers.copy()
        elif callable(prior):
            prior_p = np.asarray(prior(self.centers), dtype=np.float64)
        else:
            prior_p = np.asarray(prior, dtype=np.float64)
        if prior_p.shape != (n_bins,) or not np.all((prior_p >= 0) & (prior_p <= 1)):
            raise CalibrationError("prior must give one probability in [0, 1] per bin")
        self.prior_p = prior_p
        self.prior_strength = float(prior_strength)
        shape = (n_positions, n_bins)
        self.counts = np.zeros(shape)          # observed pairs per (position, bin)
        self.accepted = np.zeros(shape)        # accepted among them
        self.score_sums = np.zeros(shape)      # sum of raw scores (for ece_raw)
        self.pred_sums = np.zeros(shape)       # sum of predictions made before learning (prequential)
        self.n_pairs = 0
        self._p = None
        self._table = None
        self._refit()

    @property
    def n_positions(self) -> int:
        return self.counts.shape[0]

    # ------------------------------------------------------------------ fitting
    def _refit(self) -> None:
        k = self.prior_strength
        w0 = self.counts.sum(axis=0) + k
        pooled_rate = (self.accepted.sum(axis=0) + k * self.prior_p) / np.maximum(w0, 1e-12)
        w = self.counts + k
        if k > 0:  # every weight > 0: all maps in one vectorised fit
            pooled = isotonic_increasing_rows(pooled_rate[None, :], w0[None, :])[0]
            rates = (self.accepted + k * pooled) / w
            self._p = np.clip(isotonic_increasing_rows(rates, w), 0.0, 1.0)
        else:  # bins may be empty (zero weight): pool-adjacent-violators copes with those
            pooled = isotonic_increasing(pooled_rate, w0)
            rates = (self.accepted + k * pooled) / np.maximum(w, 1e-12)
            self._p = np.clip(np.array([isotonic_increasing(r, ww) for r, ww in zip(rates, w)]), 0.0, 1.0)
        # the lookup table: linear between bin centres, flat beyond the first and last (as np.interp), one gather
        left = self._p[:, self._interp_lo]
        self._table = left + (self._p[:, self._interp_lo + 1] - left) * self._interp_t
        self._table_rows = self._table.tolist()  # for calibrate_small
        self._dirty = False
        self._pairs_at_fit = self.n_pairs
        self._fit_time = time.monotonic()

    def _refit_due(self) -> bool:
        new = self.n_pairs - self._pairs_at_fit
        if self._pairs_at_fit < self.REFIT_WARM_PAIRS:
            return True
        return (new >= max(self.REFIT_MIN_PAIRS, self.REFIT_SHARE * self._pairs_at_fit) or new < 0
                or time.monotonic() - self._fit_time >= self.REFIT_MAX_AGE_S)

    def refit(self) -> None:
        """Fit the maps to every pair seen so far now (the serving path batches refits)."""
        self._refit()

    def _bins(self, scores: np.ndarray) -> np.ndarray:
        b = np.searchsorted(self.bin_edges, scores, side="right") - 1
        return np.minimum(np.maximum(b, 0), len(self.centers) - 1)

    def _positions(self, positions, shape) -> np.ndarray:
        """Map index per score (default 0), clamped to the maps there are. Called on every engine step:
        ufuncs, not ``np.clip``/``np.broadcast_to``, whose Python wrappers cost more than the work here."""
        if positions is None:
            return np.zeros(shape, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        pos = np.minimum(np.maximum(pos, 0), self.n_positions - 1)
        return pos if pos.shape == shape else np.broadcast_to(pos, shape)

    def update(self, scores, accepted, positions=None) -> None:
        """Learn from observed pairs: ``accepted[i]`` is 1 if the draft scored ``scores[i]`` (at draft
        position ``positions[i]``, default 0) was accepted."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        a = np.asarray(accepted, dtype=np.float64).ravel()
        if s.shape != a.shape:
            raise CalibrationError(f"scores and outcomes differ in length ({s.size} vs {a.size})")
        if s.size == 0:
            return
        if not np.isfinite(s).all():
            raise CalibrationError("scores must be finite")
        s = np.minimum(np.maximum(s, 0.0), 1.0)
        pos = self._positions(None if positions is None else np.asarray(positions).ravel(), s.shape)
        pred = self(s, pos)  # prequential: scored before learning
        b = self._bins(s)
        np.add.at(self.counts, (pos, b), 1.0)
        np.add.at(self.accepted, (pos, b), a)
        np.add.at(self.score_sums, (pos, b), s)
        np.add.at(self.pred_sums, (pos, b), pred)
        self.n_pairs += int(s.size)
        self._dirty = True
        if self._refit_due():  # refit here, where the adapter learns (off the step's critical path), not in a plan
            self._refit()

    def decay(self, factor: float) -> None:
        """Forget: scale every observed count by ``factor`` (0..1), so old traffic weighs less."""
        for arr in (self.counts, self.accepted, self.score_sums, self.pred_sums):
            arr *= factor
        self._refit()

    # ------------------------------------------------------------------ use
    @property
    def p_accept(self) -> np.ndarray:
        """Fitted P(accept) per (position, bin) — [n_positions, n_bins]."""
        if self._dirty:
            self._refit()
        return self._p

    def __call__(self, scores, positions=None) -> np.ndarray:
        """Calibrated P(accept) for each score (at ``positions``, default 0): monotone in the score,
        piecewise linear between bin centres (looked up at 1/1024 resolution). The map may lag the newest
        pairs by up to REFIT_MIN_PAIRS (see there); :meth:`refit` brings it up to date."""
        if self._dirty and self._refit_due():
            self._refit()
        s = np.asarray(scores, dtype=np.float64)
        idx = np.rint(np.minimum(np.maximum(s, 0.0), 1.0) * self.TABLE).astype(np.int64)
        return self._table[self._positions(positions, s.shape), idx]

    def calibrate_small(self, scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """:meth:`__call__` for a few scores ([B, K] with positions of the same shape, NaN kept as NaN) in plain
        Python: NumPy's fancy indexing releases the GIL even for a handful of elements, which on a serving
        engine's step path hands it to another thread (see ``selector.SMALL_PLAN``). Same values as
        ``__call__`` (``round`` rounds half to even, as ``np.rint``)."""
        if self._dirty and self._refit_due():
            self._refit()
        table, top, size = self._table_rows, self.n_positions - 1, self.TABLE
        out = [[v if v != v else table[min(max(q, 0), top)][int(round(min(max(v, 0.0), 1.0) * size))]
                for v, q in zip(row, prow)] for row, prow in zip(scores.tolist(), positions.tolist())]
        return np.array(out, dtype=np.float64).reshape(scores.shape)

    # ------------------------------------------------------------------ error
    def _observed(self) -> tuple[np.ndarray, np.ndarray]:
        seen = self.counts > 0
        return seen, np.where(seen, self.accepted / np.maximum(self.counts, 1e-12), 0.0)

    @property
    def ece(self) -> float:
        seen, obs = self._observed()
        return _ece(self.counts[seen], self.p_accept[seen], obs[seen])

    @property
    def ece_raw(self) -> float:
        seen, obs = self._observed()
        mean_score = self.score_sums[seen] / self.counts[seen]
        return _ece(self.counts[seen], mean_score, obs[seen])

    @property
    def ece_prequential(self) -> float:
        seen, obs = self._observed()
        mean_pred = self.pred_sums[seen] / self.counts[seen]
        return _ece(self.counts[seen], mean_pred, obs[seen])

    def summary(self) -> dict:
        def r(x):
            return None if not np.isfinite(x) else round(float(x), 5)
        return {"n_pairs": int(self.n_pairs), "n_bins": int(len(self.centers)), "n_positions": self.n_positions,
                "ece": r(self.ece), "ece_raw": r(self.ece_raw), "ece_prequential": r(self.ece_prequential)}

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "bin_edges": self.bin_edges, "scores": self.centers, "p_accept": self.p_accept,
            "prior_p": self.prior_p, "prior_strength": np.array(self.prior_strength),
            "counts": self.counts, "accepted": self.accepted, "score_sums": self.score_sums,
            "pred_sums": self.pred_sums, "n_pairs": np.array(self.n_pairs),
            "ece": np.array(self.ece), "ece_raw": np.array(self.ece_raw),
        }

    @classmethod
    def from_arrays(cls, z) -> "Calibration":
        edges = np.asarray(z["bin_edges"], np.float64)
        n = len(edges) - 1
        counts = np.asarray(z["counts"], np.float64)
        n_pos = counts.shape[0] if counts.ndim == 2 else 1
        cal = cls(n_bins=n, prior=np.asarray(z["prior_p"], np.float64), prior_strength=float(z["prior_strength"]),
                  n_positions=n_pos)
        if not np.allclose(edges, cal.bin_edges):
            raise CalibrationError("calibration bin edges are not uniform on [0, 1]")
        for name in ("counts", "accepted", "score_sums", "pred_sums"):
            arr = np.asarray(z[name], np.float64).reshape(-1, n) if np.size(z[name]) % n == 0 else None
            if arr is None or arr.shape != (n_pos, n) or not np.all(np.isfinite(arr)) or (arr < 0).any():
                raise CalibrationError(f"calibration field {name!r} is malformed")
            setattr(cal, name, arr.copy())
        if (cal.accepted > cal.counts + 1e-9).any():
            raise CalibrationError("calibration has more accepted than observed pairs")
        cal.n_pairs = int(z["n_pairs"])
        cal._dirty = True
        return cal

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            np.savez(f, **self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})
