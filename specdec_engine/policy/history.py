"""Confidence for drafters that give none (prompt lookup): each request's own acceptance history.

An n-gram drafter returns token ids and nothing else. What predicts whether
its next draft is right is mostly *which request* it is: a request that
edits code it was shown keeps matching its prompt, open generation rarely
does. So each request carries a Beta posterior over its per-token
conditional acceptance, starting from the engine-wide rate (a prior worth
``prior_strength`` observations) and updated from every verified draft and
from free "shadow" observations (a draft that was not verified, compared
with the token the target then produced). Older evidence decays
(``decay`` per observation) so a request that changes phase is followed.

The raw confidence of draft i (0-based) is ``alpha_hat ** (i + 1)``: the
probability that drafts 0..i are all right if each is right with the
request's rate. It is a *score*, not a probability: the calibration map
(:class:`~specdec_engine.policy.calibration.Calibration`) learns what it is
worth, including how acceptance really falls with depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .selector import SMALL_PLAN


@dataclass
class _Posterior:
    cls: object = None
    hits: float = 0.0
    misses: float = 0.0


class AcceptanceHistory:
    """Per-request acceptance posteriors, with priors per request class.

    A request's class is what is known about it before any draft is verified
    (the vLLM adapter uses its sampling temperature: a greedy request accepts
    a prompt-lookup draft whenever the draft is the argmax, a sampled one only
    with the target's probability of that token). Each class keeps its own
    engine-wide rate, which is the prior of its new requests.
    """

    def __init__(self, prior_rate: float = 0.5, prior_strength: float = 2.0, decay: float = 0.95,
                 global_decay: float = 0.99):
        if not 0 < prior_rate < 1 or prior_strength <= 0 or not 0 < decay <= 1:
            raise ValueError("AcceptanceHistory: prior_rate in (0,1), prior_strength > 0, decay in (0,1]")
        self.prior_rate = prior_rate
        self.prior_strength = prior_strength
        self.decay = decay
        self.global_decay = global_decay
        self._classes: dict[object, list[float]] = {}
        self._reqs: dict[str, _Posterior] = {}

    def global_rate(self, cls: object = None) -> float:
        g = self._classes.get(cls)
        return self.prior_rate if g is None else g[0] / g[1]

    def rate(self, req_id: str, cls: object = None) -> float:
        p = self._reqs.get(req_id)
        if p is None:
            return self.global_rate(cls)
        g = self.global_rate(p.cls)
        return (self.prior_strength * g + p.hits) / (self.prior_strength + p.hits + p.misses)

    def observe(self, req_id: str, hits: int, misses: int, cls: object = None) -> None:
        """``hits`` drafts accepted in a row, then ``misses`` (0 or 1) rejected: one verification."""
        if hits == 0 and misses == 0:
            return
        p = self._reqs.get(req_id)
        if p is None:
            p = self._reqs[req_id] = _Posterior(cls=cls)
        n = hits + misses
        keep = self.decay ** n
        p.hits = p.hits * keep + hits
        p.misses = p.misses * keep + misses
        g = self._classes.setdefault(p.cls, [self.prior_rate * 10.0, 10.0])
        gk = self.global_decay ** n
        g[0] = g[0] * gk + hits
        g[1] = g[1] * gk + n

    def export_priors(self) -> dict:
        """The per-class engine-wide rates (JSON-able), to persist with the calibration."""
        return {str(c): [round(h, 6), round(n, 6)] for c, (h, n) in self._classes.items()}

    def import_priors(self, priors: dict, cast=int) -> None:
        """Restore :meth:`export_priors` output (malformed entries are ignored)."""
        for key, val in (priors or {}).items():
            try:
                hits, obs = float(val[0]), float(val[1])
                cls = cast(key) if key != "None" else None
            except (TypeError, ValueError, IndexError):
                continue
            if 0 <= hits <= obs and obs > 0:
                self._classes[cls] = [hits, obs]

    def forget(self, req_id: str) -> None:
        self._reqs.pop(req_id, None)

    def scores(self, req_ids: list[str], k_max: int, n_avail: np.ndarray, classes: list | None = None) -> np.ndarray:
        """Raw cumulative confidence [len(req_ids), k_max]; NaN past each request's drafts."""
        cls = classes if classes is not None else [None] * len(req_ids)
        if len(req_ids) * k_max <= SMALL_PLAN:
            # plain Python, as the plan it feeds (selector.SMALL_PLAN): no call that releases the GIL on the
            # engine's critical path; 16 requests x K=8: 11 us against 8 us for NumPy
            nan = float("nan")
            rows = []
            for r, c, a in zip(req_ids, cls, np.asarray(n_avail).tolist()):
                rate, p, row = self.rate(r, c), 1.0, []
                for i in range(k_max):
                    p *= rate  # rate ** (i + 1) by repeated products, as the NumPy path: the same bits
                    row.append(p if i < a else nan)
                rows.append(row)
            return np.array(rows, dtype=np.float64).reshape(len(req_ids), k_max)
        rates = np.array([self.rate(r, c) for r, c in zip(req_ids, cls)], dtype=np.float64)
        out = np.cumprod(np.repeat(rates[:, None], k_max, axis=1), axis=1)
        out[np.arange(k_max)[None, :] >= np.asarray(n_avail)[:, None]] = np.nan
        return out

    def __len__(self) -> int:
        return len(self._reqs)
