"""The API-server side of the metrics: ``specdec_*`` on the ``/metrics`` that ``vllm serve`` serves.

Loaded by vLLM from the ``vllm.stat_logger_plugins`` entry point in the API
server process. It reads the counters the engine core's scheduler attached to
each step's ``SchedulerStats`` (field ``specdec_stats``) and adds them to the
Prometheus metrics defined in :mod:`specdec_engine.metrics`, labelled with the
served model name and the engine index like vLLM's own. For an engine started
without tilespec it does nothing and registers nothing.
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase

from ..metrics import SpecdecMetrics
from . import compat
from .runtime import tilespec_config


class SpecdecStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        self.engine_index = engine_index
        self.metrics: SpecdecMetrics | None = None
        if tilespec_config(vllm_config) is None:
            return
        if not compat.extend_scheduler_stats():
            return
        mc = vllm_config.model_config
        name = mc.served_model_name or mc.model
        if isinstance(name, (list, tuple)):
            name = name[0]
        k_max = int(vllm_config.speculative_config.num_speculative_tokens)
        self.metrics = SpecdecMetrics(k_max, labelnames=("model_name", "engine"),
                                      labelvalues=(str(name), str(engine_index)))

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if self.metrics is None or scheduler_stats is None:
            return
        d = getattr(scheduler_stats, compat.STATS_FIELD, None)
        if d:
            self.metrics.record(d)

    def log_engine_initialized(self):
        pass
