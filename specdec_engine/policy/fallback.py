"""Switch speculation off when it does not pay, probe, and switch it back on without flapping.

The selector already picks K=0 for a step whose *predicted* gain is nil. The
controller adds what a per-step estimate cannot: evidence over time. It only
counts steps that carry evidence: a step in which the drafter proposed
nothing says nothing about whether drafts pay (prompt lookup is silent for
long stretches even on traffic where it wins), so it neither pushes toward
OFF nor interrupts a run of good evidence.

There are two kinds of OFF:

- OFF for lack of gain: for ``patience_steps`` evidence-carrying steps in a
  row the selector's predicted gain stayed under ``1 + min_gain``. Nothing is
  verified, but the drafter keeps drafting (cheap for prompt lookup) and the
  selector keeps planning on those drafts ("shadow" plans). As soon as
  shadow plans predict ``1 + min_gain + hysteresis`` or more for
  ``resume_steps`` evidence steps in a row, speculation is back ON: the batch
  changed and the calibration, which never failed, says it pays again.
- OFF for lack of acceptance: the *measured* first-draft acceptance (share of
  speculating requests whose first draft was accepted, exponentially weighted
  over about ``window`` such requests, judged once half the window is
  seen) fell under ``accept_floor``. The calibration cannot be trusted, so
  only a probe can bring speculation back, and the engine stops drafting.
  First-draft acceptance, not accepted/drafted tokens: when verifying is
  nearly free (small batches) the selector rightly drafts deep, most deep
  drafts are rejected, and a per-token rate of 10% can still be a 2x speedup.

Probes: OFF -> PROBE after ``probe_interval_steps`` steps. A probe verifies
drafts (a first draft forced on up to ``probe_requests`` requests, so a
pessimistic calibration gets corrected) until it has seen
``probe_min_drafts`` speculating requests, or ``probe_max_steps`` steps pass.
It passes if the measured acceptance clears the floor by ``hysteresis`` and
the mean predicted gain clears ``1 + min_gain + hysteresis``: ON. It fails on
measured evidence: OFF for lack of acceptance if acceptance was the problem,
OFF for lack of gain otherwise, with the probe interval doubled (up to
``probe_max_interval_steps``; reset by a pass). A probe that saw too few
drafts to judge is inconclusive: back to the kind of OFF it came from.

ON -> OFF only after ``min_dwell_steps`` steps ON, so a short burst cannot
toggle it. :meth:`probe_now` starts a probe early; the policy calls it when
requests of a group (e.g. greedy) arrive that had no part in the evidence
that switched speculation off (e.g. only temperature-1 traffic was running).

States (the ``specdec_fallback_state`` gauge): 0 = off, 1 = on, 2 = probing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class SpecState(IntEnum):
    OFF = 0
    ON = 1
    PROBE = 2


@dataclass
class FallbackConfig:
    min_gain: float = 0.02
    accept_floor: float = 0.05
    window: int = 256
    patience_steps: int = 32
    probe_interval_steps: int = 200
    probe_max_interval_steps: int = 3200
    probe_min_drafts: int = 16
    probe_max_steps: int = 128
    probe_requests: int = 8
    resume_steps: int = 4
    hysteresis: float = 0.05
    min_dwell_steps: int = 64

    def __post_init__(self) -> None:
        for name in ("window", "patience_steps", "probe_interval_steps", "probe_min_drafts", "probe_max_steps",
                     "probe_requests", "resume_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"fallback {name} must be >= 1, got {getattr(self, name)}")
        if self.probe_max_interval_steps < self.probe_interval_steps:
            raise ValueError("fallback probe_max_interval_steps must be >= probe_interval_steps")
        if not 0 <= self.accept_floor < 1:
            raise ValueError(f"fallback accept_floor must be in [0, 1), got {self.accept_floor}")
        if self.min_gain < 0 or self.hysteresis < 0 or self.min_dwell_steps < 0:
            raise ValueError("fallback min_gain, hysteresis and min_dwell_steps must be >= 0")


@dataclass
class _Window:
    """Exponentially weighted hit ratio over about ``size`` trials."""

    size: int
    drafted: float = 0.0
    accepted: float = 0.0

    def add(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        keep = max(0.0, 1.0 - drafted / self.size)
        self.drafted = self.drafted * keep + drafted
        self.accepted = self.accepted * keep + accepted

    @property
    def full(self) -> bool:
        return self.drafted >= self.size / 2

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted if self.drafted > 0 else 0.0


@dataclass
class FallbackController:
    config: FallbackConfig = field(default_factory=FallbackConfig)
    state: SpecState = SpecState.ON
    steps_in_state: int = 0
    transitions: int = 0

    def __post_init__(self) -> None:
        self._accept = _Window(self.config.window)
        self._bad_steps = 0
        self._good_shadow_steps = 0
        self.off_for_gain = False
        self._interval = self.config.probe_interval_steps
        self._probe_drafted = 0
        self._probe_accepted = 0
        self._probe_gain_sum = 0.0
        self._probe_gain_n = 0
        self._probe_from_gain = False
        self.last_reason = "start"

    # ------------------------------------------------------------------ queries
    @property
    def speculate(self) -> bool:
        """Whether this step may verify drafts at all."""
        return self.state != SpecState.OFF

    @property
    def exploring(self) -> bool:
        """Whether this step must verify some drafts whatever their predicted value (a probe)."""
        return self.state == SpecState.PROBE

    @property
    def drafting_useful(self) -> bool:
        """Whether the drafter should run: not while off for lack of measured acceptance."""
        return self.state != SpecState.OFF or self.off_for_gain

    @property
    def acceptance(self) -> float:
        return self._accept.rate

    # ------------------------------------------------------------------ updates
    def _go(self, state: SpecState, reason: str, off_for_gain: bool = False) -> None:
        if state == SpecState.PROBE:
            self._probe_from_gain = self.off_for_gain  # an inconclusive probe returns to the same kind of OFF
        self.state = state
        self.steps_in_state = 0
        self.transitions += 1
        self.last_reason = reason
        self.off_for_gain = off_for_gain if state == SpecState.OFF else False
        self._bad_steps = 0
        self._good_shadow_steps = 0
        if state == SpecState.PROBE:
            self._probe_drafted = self._probe_accepted = self._probe_gain_n = 0
            self._probe_gain_sum = 0.0

    def observe(self, predicted_gain: float | None, drafted: int, accepted: int) -> SpecState:
        """Account one finished step and return the state for the next one.

        ``predicted_gain``: the selector's goodput ratio spec/no-spec for the
        step (while OFF: of the shadow plan); None when the step carried no
        evidence (no decode request, or no draft to plan with).
        ``drafted``: requests that verified at least one draft;
        ``accepted``: how many of them had their first draft accepted.
        """
        cfg = self.config
        self.steps_in_state += 1
        self._accept.add(drafted, accepted)
        if self.state == SpecState.ON:
            if predicted_gain is not None:
                self._bad_steps = self._bad_steps + 1 if predicted_gain < 1.0 + cfg.min_gain else 0
            if self.steps_in_state >= cfg.min_dwell_steps:
                if self._accept.full and self._accept.rate < cfg.accept_floor:
                    self._go(SpecState.OFF, f"first-draft acceptance {self._accept.rate:.3f} under floor "
                                            f"{cfg.accept_floor}")
                elif self._bad_steps >= cfg.patience_steps:
                    self._go(SpecState.OFF, f"predicted gain under {1 + cfg.min_gain:.3f} for {self._bad_steps} "
                                            "steps with drafts", off_for_gain=True)
        elif self.state == SpecState.OFF:
            if self.off_for_gain and predicted_gain is not None:
                good = predicted_gain >= 1.0 + cfg.min_gain + cfg.hysteresis
                self._good_shadow_steps = self._good_shadow_steps + 1 if good else 0
                if self._good_shadow_steps >= cfg.resume_steps:
                    self._interval = cfg.probe_interval_steps
                    self._go(SpecState.ON, f"shadow plans predict gain {predicted_gain:.3f} "
                                           f"({cfg.resume_steps} steps in a row)")
                    return self.state
            if self.steps_in_state >= self._interval:
                self._go(SpecState.PROBE, f"probe after {self.steps_in_state} steps off")
        else:  # PROBE
            self._probe_drafted += drafted
            self._probe_accepted += accepted
            if predicted_gain is not None:
                self._probe_gain_sum += predicted_gain
                self._probe_gain_n += 1
            if self._probe_drafted >= cfg.probe_min_drafts or self.steps_in_state >= cfg.probe_max_steps:
                self._end_probe()
        return self.state

    def probe_now(self, reason: str) -> bool:
        """Start a probe before the interval is up (the caller has fresh reason to doubt the OFF); only from
        OFF. Returns whether a probe started."""
        if self.state != SpecState.OFF:
            return False
        self._go(SpecState.PROBE, reason)
        return True

    def _end_probe(self) -> None:
        cfg = self.config
        n = self._probe_drafted
        rate = self._probe_accepted / n if n else 0.0
        gain = self._probe_gain_sum / self._probe_gain_n if self._probe_gain_n else 0.0
        what = f"acceptance {rate:.3f} over {n} drafting requests, predicted gain {gain:.3f}"
        if n < cfg.probe_min_drafts:
            self._interval = min(self._interval * 2, cfg.probe_max_interval_steps)
            self._go(SpecState.OFF, f"probe inconclusive ({what})", off_for_gain=self._probe_from_gain)
            return
        accept_ok = rate >= cfg.accept_floor + cfg.hysteresis
        if accept_ok and gain >= 1.0 + cfg.min_gain + cfg.hysteresis:
            self._interval = cfg.probe_interval_steps
            # the window restarts from the probe's evidence, not from what made us leave
            self._accept = _Window(cfg.window)
            self._accept.add(self._probe_drafted, self._probe_accepted)
            self._go(SpecState.ON, f"probe passed: {what}")
            return
        self._interval = min(self._interval * 2, cfg.probe_max_interval_steps)
        self._go(SpecState.OFF, f"probe failed: {what}", off_for_gain=accept_ok)
