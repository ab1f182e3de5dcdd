"""How a model drafter's confidence continues past the drafts it made: for choosing how deep to draft next.

A chain drafter (EAGLE, EAGLE-3, a draft model) pays one forward per draft
step for the whole batch, so the engine asks it for only as many steps as
the policy is likely to verify. But the policy can only choose among drafts
that exist: when a plan takes every draft it was given, it says nothing
about whether one more would have been worth its step. Growing the depth by
one now and then and watching the next plans (what the vLLM adapter did
before) spent draft steps that the next plan declined, and grew slowly at
low load (measured in ``vllm serve``, tiny target + EAGLE-3 head, 4 requests:
proposals stuck at 4 draft steps where vLLM's schedule of 5 accepted more).

Instead the next depth is what the policy itself would choose if every
request had drafts up to K_max (:meth:`TileSpecPolicy.deepest_worth`). The
missing drafts' confidences are extrapolated from the last real one with
the drafter's typical per-token log-probability at each further position
(an exponentially weighted mean over real drafts; a position never drafted
borrows the deepest one seen). These are scores like any other: the
calibration maps of those positions, learned from real drafts, say what they
are worth.
"""

from __future__ import annotations

import math

import numpy as np

PRIOR_LOG_P = math.log(0.5)  # per-token probability assumed before any draft was seen


class ConfidenceExtrapolator:
    def __init__(self, k_max: int, decay: float = 0.02):
        if k_max < 1 or not 0 < decay <= 1:
            raise ValueError("ConfidenceExtrapolator: k_max >= 1 and decay in (0, 1]")
        self.k_max = int(k_max)
        self.decay = float(decay)
        self._mu = np.full(self.k_max, np.nan)  # mean log-probability of a draft token at each position

    def observe(self, probs: np.ndarray) -> None:
        """Per-token probabilities [B, <= k_max] of one step's drafts (NaN where a request has no draft)."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.size == 0:
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.clip(p, 1e-6, 1.0))
        seen = ~np.isnan(p)
        n = seen.sum(axis=0)
        cols = np.flatnonzero(n)
        if cols.size == 0:
            return
        means = np.where(seen, logs, 0.0).sum(axis=0)[cols] / n[cols]
        mu = self._mu[cols]
        fresh = np.isnan(mu)
        self._mu[cols] = np.where(fresh, means, mu + self.decay * (means - np.where(fresh, 0.0, mu)))

    def log_p(self) -> np.ndarray:
        """Mean log-probability per position; unseen positions borrow the deepest seen one (else the prior)."""
        mu = self._mu.copy()
        last = PRIOR_LOG_P
        for j in range(self.k_max):
            if np.isnan(mu[j]):
                mu[j] = last
            else:
                last = mu[j]
        return mu

    def extend(self, cum_conf: np.ndarray, limit: np.ndarray) -> np.ndarray:
        """``cum_conf`` [B, k_max] (NaN past each request's drafts) continued up to ``limit[r]`` positions.

        Position j past a request's last real draft m-1 gets ``cum_conf[m-1] * exp(sum of log_p[m..j])``;
        a request without any draft stays without.
        """
        c = np.asarray(cum_conf, dtype=np.float64)
        B, K = c.shape
        out = c.copy()
        if B == 0:
            return out
        have = ~np.isnan(c)
        m = have.sum(axis=1)  # real drafts per request (they come first)
        s = np.concatenate(([0.0], np.cumsum(self.log_p()[:K])))  # s[j] = sum of log_p[0..j-1]
        rows = np.flatnonzero(m > 0)
        last = c[rows, m[rows] - 1]
        j = np.arange(K)
        ext = last[:, None] * np.exp(s[j + 1][None, :] - s[m[rows]][:, None])
        fill = (j[None, :] >= m[rows][:, None]) & (j[None, :] < np.asarray(limit)[rows][:, None])
        out[rows] = np.where(fill, ext, c[rows])
        out[rows] = np.where(j[None, :] < np.maximum(m[rows], np.asarray(limit)[rows])[:, None], out[rows], np.nan)
        return out


class ProposalDepth:
    """How many draft steps a chain drafter runs for the next step: what recent plans wanted, plus probes.

    ``next(wanted)``: ``wanted`` is the plan's deepest K, or, when the plan took the deepest drafts there
    were, the deepest K the policy would take from drafts continued up to K_max
    (:meth:`TileSpecPolicy.deepest_worth`). The drafter pays a forward per step for the whole batch, so
    drafting deeper than the policy verifies is waste; but the next plan can only choose among the drafts this
    proposal makes. The answer is the deepest K wanted by the last ``window`` plans, at least 1 (vLLM's first
    pass runs anyway, and its draft is what the policy scores). Two earlier rules fell short (both measured in
    ``vllm serve``, tiny target + EAGLE-3 head): following the last plan alone ratcheted down after one unsure
    step (1 request: mean K 2.0 against a static K=3's 2.4 tokens per step), and growing by one draft on
    saturated plans either oscillated or stuck below vLLM's own schedule.

    Every ``probe_every``-th proposal is one step deeper, and the one after the next is one step shallower,
    than the rule says (within 1..K_max): what one more draft step costs is learned from measured steps
    (:meth:`StepTimeFit.solve_depth`), and a depth that never varies teaches nothing about its slope, which
    is what decides between depths (at 16 requests every plan took K=3, and static K=1 ran 1.16x faster).
    A probe costs one draft step (deeper) or one step's drafts beyond the shallower depth, on 2 of
    ``probe_every`` steps; ``probe_every=0`` turns probes off.
    """

    def __init__(self, k_max: int, window: int = 2, probe_every: int = 32):
        if k_max < 1 or window < 1 or probe_every < 0:
            raise ValueError("ProposalDepth: k_max >= 1, window >= 1, probe_every >= 0")
        self.k_max = int(k_max)
        self.window = int(window)
        self.probe_every = int(probe_every)
        self._recent: list[int] = []
        self._n = 0
        self.probes = 0
        self.depth = self.k_max  # before any plan: as deep as allowed, so the first plans see every position

    def next(self, wanted: int) -> int:
        self._recent = (self._recent + [int(wanted)])[-self.window:]
        depth = int(min(self.k_max, max(1, max(self._recent))))
        self._n += 1
        if self.probe_every:
            phase = self._n % self.probe_every
            probe = depth + 1 if phase == 0 else depth - 1 if phase == 2 else depth
            if probe != depth and 1 <= probe <= self.k_max:
                depth = probe
                self.probes += 1
        self.depth = depth
        return depth
