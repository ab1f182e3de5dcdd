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


class SpecdecMetrics:
    """Create (once per registry) and update the ``specdec_*`` metrics."""

    def __init__(self, k_max: int, registry: CollectorRegistry | None = None,
                 labelnames: Sequence[str] = ("model_name",), labelvalues: Sequence[str] = ("unknown",)):
        reg = registry if registry is not None else REGISTRY
        self.k_max = int(k_max)
        ln = list(labelnames)
        lv = list(labelvalues)

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, ln + list(extra), registry=reg)

        self.steps = counter("steps", "Steps planned by the TileSpec policy").labels(*lv)
        self.steps_spec_off = counter("steps_spec_off", "Steps in which no request verified a draft "
                                      "(fallback off, or nothing worth verifying)").labels(*lv)
        self.drafts = counter("drafts", "Request-steps that verified at least one draft token").labels(*lv)
        self.draft_tokens = counter("draft_tokens", "Draft tokens verified").labels(*lv)
        self.accepted_tokens = counter("accepted_tokens", "Draft tokens accepted").labels(*lv)
        per_pos = counter("accepted_tokens_per_pos", "Draft tokens accepted at each position", ("position",))
        self.accepted_per_pos = [per_pos.labels(*lv, str(i)) for i in range(self.k_max)]
        self.chosen_k = _BulkHistogram(PREFIX + "chosen_k", "K chosen per request-step (0 = no draft verified)",
                                       ln, buckets=[float(k) for k in range(self.k_max + 1)],
                                       registry=reg).labels(*lv)
        self.fallback_state = Gauge(PREFIX + "fallback_state", "Speculation state: 0=off, 1=on, 2=probing",
                                    ln, registry=reg, multiprocess_mode="liveall").labels(*lv)
        self.predicted_ms = counter("step_predicted_ms", "Sum of predicted step latencies (ms)").labels(*lv)
        self.measured_ms = counter("step_measured_ms", "Sum of measured step latencies (ms)").labels(*lv)
        self.timed_steps = counter("timed_steps", "Steps with both a predicted and a measured latency").labels(*lv)
        self.calibration_ece = Gauge(PREFIX + "calibration_ece", "Prequential expected calibration error "
                                     "of draft confidence", ln, registry=reg, multiprocess_mode="liveall").labels(*lv)
        self.calibration_pairs = Gauge(PREFIX + "calibration_pairs", "Pairs the calibration learned from",
                                       ln, registry=reg, multiprocess_mode="liveall").labels(*lv)
        self.fallback_state.set(1)

    def record(self, stats: Mapping) -> None:
        """Add one batch of counters (``PolicyStats.to_dict()`` + optional gauges) to the metrics."""
        self.steps.inc(stats.get("steps", 0))
        self.steps_spec_off.inc(stats.get("steps_spec_off", 0))
        self.drafts.inc(stats.get("drafts", 0))
        self.draft_tokens.inc(stats.get("draft_tokens", 0))
        self.accepted_tokens.inc(stats.get("accepted_tokens", 0))
        for i, c in enumerate(stats.get("accepted_per_pos", [])[: self.k_max]):
            if c:
                self.accepted_per_pos[i].inc(c)
        for k, c in enumerate(stats.get("chosen_k", [])[: self.k_max + 1]):
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
