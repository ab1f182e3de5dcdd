"""TileSpecAdaptivePolicy: SGLang's adaptive-spec policy protocol, answered by the engine-agnostic core.

SGLang (0.5.23: ``AdaptiveSpecPolicy``, used by ``AdaptiveController``) asks a policy five things::

    candidate_steps                      -> the step counts it captures CUDA graphs for
    set_cuda_graph_bs(bs_list)           <- the captured decode batch sizes
    cuda_graph_bs_for_step(step)         -> which of them to capture for that step count
    get_steps_for_batch(batch_size)      -> the step count of the next decode round (0 = no speculation)
    on_verify_complete(accepted, bs)     <- accepted drafts per request of a finished round

This class only translates. Every decision is the core's (``specdec_engine.policy.TileSpecPolicy``): the
same calibration, K selection (Dinkelbach rate, minimum gain) and fallback state machine (off/probe/on with
hysteresis) as the vLLM adapter. What is SGLang-specific is how a round maps onto the core's terms:

- every request of a round drafts the same number of steps s and the verify graph runs at the padded
  batch size ``B_pad`` (the next captured size) over ``B_pad * (s + 1)`` tokens. So the core plans the B
  real requests over a latency curve that is SGLang's padded one (:class:`PaddedVerifyLatency`): a
  token total between two candidate levels ``B * (s + 1)`` costs what the next level's padded forward
  costs. A plan that stops between two levels then never beats the full upper level (same time, fewer
  expected tokens), so the core's best plan is a candidate step count for every request, and the step
  count is the smallest candidate that covers the plan's longest draft;
- a draft's raw confidence is the per-position cumulative acceptance prior (``prior.py``): SGLang gives
  the policy nothing per request before a round. The core's calibration learns per position what it is
  worth from every verified round (``num_correct_drafts_per_req``).

With overlap scheduling SGLang asks for round t+1's step count before it reports round t's outcome; the
policy keeps a FIFO of the rounds it planned and matches each outcome with the oldest one.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict, deque
from typing import Callable, Sequence

import numpy as np

from ..policy import Calibration, LatencyModel, TileSpecPolicy
from .config import TileSpecSGLangConfig
from .prior import cumulative, per_position, read_training_log

logger = logging.getLogger("specdec_engine.sglang")


class PaddedVerifyLatency:
    """SGLang's verify cost as the core's selector sees it, for a round of B real requests.

    Duck-types the part of :class:`LatencyModel` the selector reads (``curve``). A round of s draft
    steps over B requests runs the verify graph of the padded batch ``B_pad`` (the next captured size)
    over ``B_pad * (s + 1)`` tokens. The core counts only the B real requests' tokens (``B + drafts``);
    a total between two candidate levels ``B * (s + 1)`` costs the next level's padded forward, as the
    captured graphs would run it. Padding rows get no slack: their slots are dummies, not drafts.
    """

    def __init__(self, model: LatencyModel, candidate_steps: Sequence[int], cuda_graph_bs: Sequence[int] | None = None):
        self.model = model
        self.levels = np.array(sorted({int(s) + 1 for s in candidate_steps}), dtype=np.int64)  # tokens/request
        self.cuda_graph_bs: list[int] | None = None
        self._curves: OrderedDict[int, np.ndarray] = OrderedDict()
        self.set_cuda_graph_bs(cuda_graph_bs)

    def set_cuda_graph_bs(self, cuda_graph_bs: Sequence[int] | None) -> None:
        self.cuda_graph_bs = sorted({int(b) for b in cuda_graph_bs}) if cuda_graph_bs else None
        self._curves.clear()

    def curve(self, batch: int, max_tokens: int) -> np.ndarray:
        b = max(int(batch), 1)
        cur = self._curves.get(b)
        if cur is None or len(cur) <= max_tokens:
            b_pad = pad_batch(b, self.cuda_graph_bs)
            size = max(int(max_tokens), b * int(self.levels[-1])) + 1
            base = self.model.curve(b_pad, b_pad * int(self.levels[-1]))
            tokens = np.arange(size)
            idx = np.minimum(np.searchsorted(b * self.levels, tokens, side="left"), len(self.levels) - 1)
            cur = np.asarray(base[b_pad * self.levels[idx]], dtype=np.float64)
            cur.setflags(write=False)
            self._curves[b] = cur
            if len(self._curves) > 1024:
                self._curves.popitem(last=False)
        return cur

    def predict(self, batch, tokens) -> float:
        return float(self.curve(int(batch), int(tokens))[int(tokens)])


def steps_for_plan(k: np.ndarray, candidate_steps: Sequence[int]) -> int:
    """The smallest candidate step count that covers the plan's longest draft (0 when nothing is drafted)."""
    cands = sorted(candidate_steps)
    longest = int(np.max(k)) if np.size(k) else 0
    for s in cands:
        if s >= longest:
            return s
    return cands[-1]


def pad_batch(batch_size: int, cuda_graph_bs: Sequence[int] | None) -> int:
    """The batch size the verify graph runs at: the next captured size (unchanged above the largest)."""
    if not cuda_graph_bs:
        return int(batch_size)
    i = bisect.bisect_left(cuda_graph_bs, int(batch_size))
    return int(cuda_graph_bs[i]) if i < len(cuda_graph_bs) else int(batch_size)


class TileSpecAdaptivePolicy:
    """SGLang's adaptive policy protocol over a :class:`TileSpecPolicy` (see the module doc)."""

    def __init__(self, core: TileSpecPolicy, candidate_steps: Sequence[int], raw_confidence: np.ndarray,
                 initial_steps: int | None = None, on_interval: Callable[["TileSpecAdaptivePolicy"], None] | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.perf_counter,
                 max_step_gap_ms: float = 1000.0):
        self.core = core
        self._candidates = sorted({int(s) for s in candidate_steps})
        if self._candidates[-1] != core.k_max:
            raise ValueError(f"core k_max {core.k_max} != largest candidate step count {self._candidates[-1]}")
        self._raw = np.asarray(raw_confidence, dtype=np.float64).reshape(-1)
        if self._raw.shape[0] != core.k_max:
            raise ValueError(f"raw confidence has {self._raw.shape[0]} positions, expected {core.k_max}")
        self._cuda_graph_bs: list[int] | None = None
        self._pending: deque[tuple[int, int]] = deque(maxlen=64)  # (batch size, steps) of planned rounds
        self.current_steps = int(initial_steps if initial_steps is not None else self._candidates[-1])
        self.rounds = 0
        self.unmatched_outcomes = 0
        self._on_interval = on_interval
        self._interval_s = float(interval_s)
        self._clock = clock
        self._last_interval = clock()
        self._last_outcome_t: float | None = None
        self._max_gap_ms = float(max_step_gap_ms)

    # ------------------------------------------------------------------ protocol
    @property
    def candidate_steps(self) -> list[int]:
        return list(self._candidates)

    def set_cuda_graph_bs(self, cuda_graph_bs: list[int] | None) -> None:
        self._cuda_graph_bs = sorted({int(b) for b in cuda_graph_bs}) if cuda_graph_bs else None
        latency = self.core.selector.latency
        if isinstance(latency, PaddedVerifyLatency):
            latency.set_cuda_graph_bs(self._cuda_graph_bs)

    def cuda_graph_bs_for_step(self, step: int) -> list[int] | None:
        """Every captured batch size, for every step count: the policy may choose any step at any size."""
        return None if self._cuda_graph_bs is None else list(self._cuda_graph_bs)

    def get_steps_for_batch(self, batch_size: int) -> int:
        b = int(batch_size)
        if b <= 0:
            return self.current_steps
        steps = self.plan_steps(b)
        self._pending.append((b, steps))
        self.current_steps = steps
        return steps

    def on_verify_complete(self, num_correct_drafts_per_req: list[int], batch_size: int) -> int | None:
        """Learn from a finished round. Returns None: the next round's step count is chosen (per batch
        size) by :meth:`get_steps_for_batch`, which SGLang calls before every round."""
        acc = np.asarray(num_correct_drafts_per_req, dtype=np.int64).reshape(-1)
        if self._pending:
            _, steps = self._pending.popleft()
        else:  # an outcome of a round we did not plan (SGLang's initial state before the first call)
            steps = self.current_steps
            self.unmatched_outcomes += 1
        self.learn(acc, steps)
        now = self._clock()
        if self._last_outcome_t is not None:
            gap_ms = (now - self._last_outcome_t) * 1000.0
            if 0 < gap_ms < self._max_gap_ms:  # consecutive decode rounds: the period is the step time
                self.core.observe_step_time(gap_ms)
        self._last_outcome_t = now
        if self._on_interval is not None and now - self._last_interval >= self._interval_s:
            self._last_interval = now
            try:
                self._on_interval(self)
            except Exception:  # noqa: BLE001 - reporting must never hurt serving
                logger.exception("TileSpec: periodic reporting failed")
        return None

    # ------------------------------------------------------------------ translation
    def padded_batch(self, batch_size: int) -> int:
        return pad_batch(batch_size, self._cuda_graph_bs)

    def raw_rows(self, n: int) -> np.ndarray:
        return np.tile(self._raw, (int(n), 1))

    def plan_steps(self, batch_size: int) -> int:
        """The core's plan for a round of ``batch_size`` requests, as a step count."""
        plan = self.core.plan(self.raw_rows(int(batch_size)))  # the padding is in the latency curve
        self.rounds += 1
        return steps_for_plan(plan.k, self._candidates)

    def learn(self, accepted: np.ndarray, steps: int) -> None:
        n = len(accepted)
        k = np.full(n, int(steps), dtype=np.int64)
        self.core.learn(self.raw_rows(n), k, np.minimum(accepted, k))

    def take_stats(self) -> dict:
        d = self.core.take_stats().to_dict()
        d["k_max"] = self.core.k_max
        return d


class StaticPolicy:
    """The protocol with no model behind it: always the largest candidate (SGLang's static EAGLE).

    Seated in the controller while graphs are captured (before a latency model exists), and kept there
    when warmup profiling fails or ``enabled`` is false. Records the captured batch sizes for the real
    policy.
    """

    def __init__(self, candidate_steps: Sequence[int]):
        self._candidates = sorted({int(s) for s in candidate_steps})
        self.cuda_graph_bs: list[int] | None = None

    @property
    def candidate_steps(self) -> list[int]:
        return list(self._candidates)

    def set_cuda_graph_bs(self, cuda_graph_bs: list[int] | None) -> None:
        self.cuda_graph_bs = sorted({int(b) for b in cuda_graph_bs}) if cuda_graph_bs else None

    def cuda_graph_bs_for_step(self, step: int) -> list[int] | None:
        return None if self.cuda_graph_bs is None else list(self.cuda_graph_bs)

    def get_steps_for_batch(self, batch_size: int) -> int:
        return self._candidates[-1]

    def on_verify_complete(self, num_correct_drafts_per_req: list[int], batch_size: int) -> int | None:
        return None


# ------------------------------------------------------------------------------------------ construction
def acceptance_prior(cfg: TileSpecSGLangConfig) -> tuple[np.ndarray, str]:
    """Conditional per-position acceptance for positions 0..k_max-1, and where it came from."""
    if cfg.training_log:
        return per_position(read_training_log(cfg.training_log), cfg.k_max), f"training log {cfg.training_log}"
    return per_position(cfg.acceptance_prior, cfg.k_max), "acceptance_prior"


def build_policy(cfg: TileSpecSGLangConfig, latency: LatencyModel, calibration: Calibration | None = None,
                 draft_cost_ms: Sequence[float] | float = 0.0, initial_steps: int | None = None,
                 on_interval=None, clock=time.perf_counter) -> TileSpecAdaptivePolicy:
    """The policy SGLang's controller drives, from a latency model (profiled or cached) and the config."""
    k_max = cfg.k_max
    conditional, _ = acceptance_prior(cfg)
    if calibration is not None and calibration.n_positions != k_max:
        logger.info("TileSpec: cached calibration has %d position maps, this engine needs %d; starting a new one",
                    calibration.n_positions, k_max)
        calibration = None
    if calibration is None:
        calibration = Calibration(n_bins=cfg.calibration_bins, prior_strength=cfg.prior_strength, n_positions=k_max)
    core = TileSpecPolicy(PaddedVerifyLatency(latency, cfg.candidate_steps), k_max, calibration=calibration,
                          fallback=cfg.fallback_core(), draft_cost_ms=draft_cost_ms, min_gain=cfg.min_step_gain,
                          learn_overhead=cfg.learn_overhead)
    return TileSpecAdaptivePolicy(core, cfg.candidate_steps, cumulative(conditional), initial_steps=initial_steps,
                                  on_interval=on_interval, interval_s=cfg.metrics_interval_s, clock=clock)
