"""Switch speculation off when it does not pay, probe, and switch it back on without flapping.

The selector already picks K=0 for a step whose *predicted* gain is nil. The
controller adds what a per-step estimate cannot: evidence over time.

- ON -> OFF when, for ``patience_steps`` steps in a row, the selector's
  predicted gain stays under ``1 + min_gain``, or when the *measured*
  acceptance falls under ``accept_floor`` (the calibration can be wrong;
  measured acceptance cannot). Acceptance here is the share of speculating
  requests whose *first* draft was accepted, exponentially weighted over
  about ``window`` such requests. Not accepted/drafted tokens: when
  verifying is nearly free (small batches) the selector rightly drafts deep,
  most deep drafts are rejected, and a per-token rate of 10% can still be a
  2x speedup. While OFF the engine
  skips drafting where it can and schedules K=0 for every request, so it
  costs what no speculation costs.
- OFF (for lack of predicted gain) -> ON as soon as the selector, still
  evaluated on the drafts available while off ("shadow" plans, not
  verified), predicts a gain of ``1 + min_gain + hysteresis`` or more for
  ``resume_steps`` steps in a row: the batch changed (an easy request
  arrived) and the calibration, which did not fail, says it pays again.
- OFF -> PROBE after ``probe_interval_steps``: speculation runs for
  ``probe_steps`` steps, with a first draft forced on up to
  ``probe_requests`` requests so outcomes are observed (otherwise a
  pessimistic calibration would never be corrected).
- PROBE -> ON only if the probe's measured acceptance clears the floor by
  ``hysteresis`` and its mean predicted gain clears ``1 + min_gain +
  hysteresis``; otherwise OFF again with the probe interval doubled (up to
  ``probe_max_interval_steps``), reset when a probe succeeds.
- Every state is held for at least ``min_dwell_steps`` before ON -> OFF, so
  a short burst cannot toggle it.

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
    probe_steps: int = 16
    probe_requests: int = 8
    resume_steps: int = 4
    hysteresis: float = 0.05
    min_dwell_steps: int = 64

    def __post_init__(self) -> None:
        for name in ("window", "patience_steps", "probe_interval_steps", "probe_steps", "probe_requests", "resume_steps"):
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
    def acceptance(self) -> float:
        return self._accept.rate

    # ------------------------------------------------------------------ updates
    def _go(self, state: SpecState, reason: str) -> None:
        self.state = state
        self.steps_in_state = 0
        self.transitions += 1
        self.last_reason = reason
        if state == SpecState.PROBE:
            self._probe_drafted = self._probe_accepted = self._probe_gain_n = 0
            self._probe_gain_sum = 0.0
        if state == SpecState.ON:
            self._bad_steps = 0
        if state == SpecState.OFF:
            self._good_shadow_steps = 0

    def observe(self, predicted_gain: float | None, drafted: int, accepted: int) -> SpecState:
        """Account one finished step and return the state for the next one.

        ``predicted_gain``: the selector's goodput ratio spec/no-spec for the
        step (while OFF: of the shadow plan), None when it did not run (no
        decode requests, or no drafts while off).
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
                if self._bad_steps >= cfg.patience_steps:
                    self.off_for_gain = True
                    self._go(SpecState.OFF, f"predicted gain under {1 + cfg.min_gain:.3f} for {self._bad_steps} steps")
                elif self._accept.full and self._accept.rate < cfg.accept_floor:
                    self.off_for_gain = False
                    self._go(SpecState.OFF, f"acceptance {self._accept.rate:.3f} under floor {cfg.accept_floor}")
        elif self.state == SpecState.OFF:
            if self.off_for_gain and predicted_gain is not None:
                good = predicted_gain >= 1.0 + cfg.min_gain + cfg.hysteresis
                self._good_shadow_steps = self._good_shadow_steps + 1 if good else 0
                if self._good_shadow_steps >= cfg.resume_steps:
                    self._go(SpecState.ON, f"predicted gain {predicted_gain:.3f} for {self._good_shadow_steps} steps")
                    return self.state
            if self.steps_in_state >= self._interval:
                self._go(SpecState.PROBE, f"probe after {self.steps_in_state} steps off")
        else:  # PROBE
            self._probe_drafted += drafted
            self._probe_accepted += accepted
            if predicted_gain is not None:
                self._probe_gain_sum += predicted_gain
                self._probe_gain_n += 1
            if self.steps_in_state >= cfg.probe_steps:
                rate = self._probe_accepted / self._probe_drafted if self._probe_drafted else 0.0
                gain = self._probe_gain_sum / self._probe_gain_n if self._probe_gain_n else 0.0
                if (self._probe_drafted > 0 and rate >= cfg.accept_floor + cfg.hysteresis
                        and gain >= 1.0 + cfg.min_gain + cfg.hysteresis):
                    self._interval = cfg.probe_interval_steps
                    # the window restarts from the probe's evidence, not from what made us leave
                    self._accept = _Window(cfg.window)
                    self._accept.add(self._probe_drafted, self._probe_accepted)
                    self._go(SpecState.ON, f"probe passed: acceptance {rate:.3f}, predicted gain {gain:.3f}")
                else:
                    self._interval = min(self._interval * 2, cfg.probe_max_interval_steps)
                    self.off_for_gain = self._probe_drafted > 0 and rate >= cfg.accept_floor + cfg.hysteresis
                    self._go(SpecState.OFF, f"probe failed: acceptance {rate:.3f}, predicted gain {gain:.3f}")
        return self.state
