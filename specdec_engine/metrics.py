"""The ``specdec_*`` Prometheus metrics: one definition for both engines.

Named ``specdec_`` and never ``vllm:spec_decode*`` / ``sglang:spec*``:
``vllm bench serve`` sums every ``vllm:spec_decode*`` series it finds, and vLLM
unregisters every ``vllm:`` collector when it rebuilds its loggers.

Engines hand :meth:`SpecdecMetrics.record` a plain dict (``PolicyStats.to_dict()``
plus a few gauges), so the same numbers can travel between processes
(vLLM's engine core -> API server) without pickling our classes.

| metric | type | meaning |
|---|---|---|
| specdec_steps_total | counter | steps planned by the policy |
| specdec_steps_spec_off_total | counter | steps in which no request verified a draft |
| specdec_drafts_total | counter | request-steps that verified >= 1 draft token |
| specdec_draft_tokens_total | counter | draft tokens verified |
| specdec_accepted_tokens_total | counter | draft tokens accepted |
| specdec_accepted_tokens_per_pos_total{position} | counter | accepted at draft position i (0-based) |
| specdec_chosen_k | histogram | K chosen per request-step (0 = none) |
| specdec_fallback_state | gauge | 0 = off, 1 = on, 2 = probing |
| specdec_step_predicted_ms_total / specdec_step_measured_ms_total / specdec_timed_steps_total | counters | predicted vs measured step latency (ratio of rates = mean) |
| specdec_calibration_ece | gauge | prequential expected calibration error of draft confidence |
| specdec_calibration_pairs | gauge | (confidence, outcome) pairs the calibration has learned from |
"""

from __future__ import annotations

from typing import Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "specdec_"
FALLBACK_STATES = {0: "off", 1: "on", 2: "probing"}


class _BulkHistogram(Histogram):
    """A Histogram that can add ``count`` observations of one value in O(buckets).

    The policy ships per-K counts (e.g. 200 requests chose K=3); observing them
    one by one would cost a call per request per step.
    """

    def observe_many(self, value: float, count: int) -> None:
        if count <= 0:
            return
        buckets = getattr(self, "_buckets", None)
        upper = getattr(self, "_upper_bounds", None)
        if buckets is None or upper is None:  # prometheus_client changed its internals: stay correct, slower
            for _ in range(int(count)):
                self.observe(value)
            return
        self._sum.inc(value * count)
        for i, bound in enumerate(upper):
            if value <= bound:
                buckets[i].inc(count)
                break


CHOSEN_K_BUCKETS = [float(k) for k in range(17)]  # K = 0..16, larger K lands in +Inf


class SpecdecCollectors:
    """The ``specdec_*`` collectors of one registry (registered once; prometheus_client refuses twice)."""

    def __init__(self, registry: CollectorRegistry, labelnames: Sequence[str]):
        ln = list(labelnames)
        self.labelnames = tuple(ln)

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, ln + list(extra), registry=registry)

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, ln, registry=registry, multiprocess_mode="liveall")

        self.steps = counter("steps", "Steps planned by the TileSpec policy")
        self.steps_spec_off = counter("steps_spec_off", "Steps in which no request verified a draft "
                                      "(fallback off, or nothing worth verifying)")
        self.drafts = counter("drafts", "Request-steps that verified at least one draft token")
        self.draft_tokens = counter("draft_tokens", "Draft tokens verified")
        self.accepted_tokens = counter("accepted_tokens", "Draft tokens accepted")
        self.accepted_per_pos = counter("accepted_tokens_per_pos", "Draft tokens accepted at each position",
                                        ("position",))
        self.chosen_k = _BulkHistogram(PREFIX + "chosen_k", "K chosen per request-step (0 = no draft verified)",
                                       ln, buckets=CHOSEN_K_BUCKETS, registry=registry)
        self.fallback_state = gauge("fallback_state", "Speculation state: 0=off, 1=on, 2=probing")
        self.predicted_ms = counter("step_predicted_ms", "Sum of predicted step latencies (ms)")
        self.measured_ms = counter("step_measured_ms", "Sum of measured step latencies (ms)")
        self.timed_steps = counter("timed_steps", "Steps with both a predicted and a measured latency")
        self.calibration_ece = gauge("calibration_ece", "Prequential expected calibration error of draft confidence")
        self.calibration_pairs = gauge("calibration_pairs", "Pairs the calibration learned from")


_COLLECTORS: dict[int, SpecdecCollectors] = {}


def collectors_for(registry: CollectorRegistry | None = None,
                   labelnames: Sequence[str] = ("model_name",)) -> SpecdecCollectors:
    reg = registry if registry is not None else REGISTRY
    col = _COLLECTORS.get(id(reg))
    if col is None:
        col = _COLLECTORS[id(reg)] = SpecdecCollectors(reg, labelnames)
    elif col.labelnames != tuple(labelnames):
        raise ValueError(f"specdec_* metrics already registered with labels {col.labelnames}, not {tuple(labelnames)}")
    return col


class SpecdecMetrics:
    """The ``specdec_*`` metrics of one label set (e.g. one model on one engine), updated per step batch."""

    def __init__(self, k_max: int, registry: CollectorRegistry | None = None,
                 labelnames: Sequence[str] = ("model_name",), labelvalues: Sequence[str] = ("unknown",)):
        col = collectors_for(registry, labelnames)
        lv = [str(v) for v in labelvalues]
        self.k_max = int(k_max)
        self._per_pos_family = col.accepted_per_pos
        self._lv = lv
        self.steps = col.steps.labels(*lv)
        self.steps_spec_off = col.steps_spec_off.labels(*lv)
        self.drafts = col.drafts.labels(*lv)
        self.draft_tokens = col.draft_tokens.labels(*lv)
        self.accepted_tokens = col.accepted_tokens.labels(*lv)
        self.accepted_per_pos = [col.accepted_per_pos.labels(*lv, str(i)) for i in range(self.k_max)]
        self.chosen_k = col.chosen_k.labels(*lv)
        self.fallback_state = col.fallback_state.labels(*lv)
        self.predicted_ms = col.predicted_ms.labels(*lv)
        self.measured_ms = col.measured_ms.labels(*lv)
        self.timed_steps = col.timed_steps.labels(*lv)
        self.calibration_ece = col.calibration_ece.labels(*lv)
        self.calibration_pairs = col.calibration_pairs.labels(*lv)
        self.fallback_state.set(1)

    def record(self, stats: Mapping) -> None:
        """Add one batch of counters (``PolicyStats.to_dict()`` + optional gauges) to the metrics."""
        self.steps.inc(stats.get("steps", 0))
        self.steps_spec_off.inc(stats.get("steps_spec_off", 0))
        self.drafts.inc(stats.get("drafts", 0))
        self.draft_tokens.inc(stats.get("draft_tokens", 0))
        self.accepted_tokens.inc(stats.get("accepted_tokens", 0))
        per_pos = stats.get("accepted_per_pos", [])
        while len(self.accepted_per_pos) < len(per_pos):
            self.accepted_per_pos.append(self._per_pos_family.labels(*self._lv, str(len(self.accepted_per_pos))))
        for i, c in enumerate(per_pos):
            if c:
                self.accepted_per_pos[i].inc(c)
        for k, c in enumerate(stats.get("chosen_k", [])):
            self.chosen_k.observe_many(float(k), int(c))
        if stats.get("timed_steps"):
            self.predicted_ms.inc(stats.get("timed_predicted_ms", 0.0))
            self.measured_ms.inc(stats.get("timed_measured_ms", 0.0))
            self.timed_steps.inc(stats["timed_steps"])
        if "fallback_state" in stats:
            self.fallback_state.set(int(stats["fallback_state"]))
        if stats.get("calibration_ece") is not None:
            self.calibration_ece.set(float(stats["calibration_ece"]))
        if stats.get("calibration_pairs") is not None:
            self.calibration_pairs.set(float(stats["calibration_pairs"]))
