"""What tilespec keeps in one SGLang scheduler process: config, cache, latency model, policy, metrics.

Made by the worker (``worker.py``) in the scheduler process, filled by warmup profiling (``warmup.py``),
turned into the policy the controller calls. With TP > 1 every rank has one; TP rank 0's profile and
calibration are broadcast to the others and the measured-step-time fit (``learn_overhead``) is off, so
that every rank sees the same inputs and takes the same decision each round (ranks replay different
graphs otherwise, and their collectives would hang). Only TP rank 0 publishes metrics.
"""

from __future__ import annotations

import functools
import logging
import os

from ..cache import DEFAULT_CACHE_ENV, CacheKey, CalibrationAutosave, ProfileCache, drafter_identity
from ..policy import Calibration, LatencyModel
from . import compat
from .config import TileSpecConfigError, TileSpecSGLangConfig, resolve_base
from .policy import TileSpecAdaptivePolicy, acceptance_prior, build_policy

logger = logging.getLogger("specdec_engine.sglang")


def model_label(server_args) -> str:
    return str(getattr(server_args, "served_model_name", None) or getattr(server_args, "model_path", "unknown"))


class SGLangRuntime:
    def __init__(self, cfg: TileSpecSGLangConfig, server_args=None, cache: ProfileCache | None = None):
        self.cfg = cfg
        self.server_args = server_args
        root = cfg.cache_dir or os.environ.get(DEFAULT_CACHE_ENV) or "cache"
        self.cache = cache or ProfileCache(root)
        self.key: CacheKey | None = None
        self.latency: LatencyModel | None = None
        self.calibration: Calibration | None = None
        self.draft_cost_ms: list[float] | float = 0.0
        self.profile_info: dict = {}
        self.disabled_reason: str | None = None
        self.metrics = None
        self.policy: TileSpecAdaptivePolicy | None = None
        self.tp_rank, self.tp_size = compat.tp_rank_and_size()
        self._autosave = CalibrationAutosave(cfg.calibration_save_interval_s)

    @functools.cached_property
    def drafter(self) -> str | None:
        """The drafter the calibration belongs to (:func:`~specdec_engine.cache.drafter_identity`): the base
        (eagle3 / eagle, as the plugin resolves ``TILESPEC``, before or after it has) and the draft model path.
        Worked out once: the server arguments do not change while serving, and every autosave asks."""
        from .algorithm import base_of

        sa = self.server_args
        algo = getattr(sa, "speculative_algorithm", None)
        if sa is None or algo is None:
            return None
        path = getattr(sa, "speculative_draft_model_path", None)
        name = str(getattr(algo, "name", algo))
        try:
            base = base_of(name) or resolve_base(self.cfg, path)
        except TileSpecConfigError:  # a hub id with base auto: the name and the path still tell drafters apart
            base = name
        return drafter_identity(base.lower(), path)

    def make_policy(self, static, initial_steps: int | None = None) -> TileSpecAdaptivePolicy | None:
        """The policy for the controller (None: keep the static one, the reason is logged)."""
        if not self.cfg.enabled:
            logger.info("TileSpec: 'enabled': false; SGLang runs EAGLE at %d steps every round", self.cfg.k_max)
            return None
        if self.latency is None:
            logger.warning("TileSpec: no latency model (%s); SGLang runs EAGLE at %d steps every round",
                           self.disabled_reason or "warmup did not run", self.cfg.k_max)
            return None
        policy = build_policy(self.cfg, self.latency, self.calibration, self.draft_cost_ms,
                              initial_steps=initial_steps, on_interval=self._on_interval)
        if self.tp_size > 1:
            policy.core.learn_overhead = False  # measured wall time differs per rank; decisions must not
        policy.set_cuda_graph_bs(getattr(static, "cuda_graph_bs", None))
        self.calibration = policy.core.calibration
        self.policy = policy
        if self.tp_rank == 0:
            self.metrics = make_metrics(policy.core.k_max, model_label(self.server_args))
        _, source = acceptance_prior(self.cfg)
        logger.info("TileSpec: policy active: candidate steps %s, captured batch sizes %s, acceptance prior from "
                    "%s, calibration %d pairs", self.cfg.candidate_steps, getattr(static, "cuda_graph_bs", None),
                    source, self.calibration.n_pairs)
        return policy

    def _on_interval(self, policy: TileSpecAdaptivePolicy) -> None:
        stats = policy.take_stats()
        if self.metrics is not None:
            self.metrics.record(stats)
        if self.tp_rank == 0:
            self.maybe_save_calibration()

    def maybe_save_calibration(self, force: bool = False) -> None:
        """Persist the online calibration every ``calibration_save_interval_s`` (atomic; never raises)."""
        self._autosave.maybe_save(self.cache, self.key, self.latency, self.calibration,
                                  profile_meta=self.profile_info, force=force, drafter=self.drafter)


def make_metrics(k_max: int, model_name: str, registry=None):
    """The ``specdec_*`` metrics of this process (SGLang's label name ``model_name``).

    In an SGLang server ``PROMETHEUS_MULTIPROC_DIR`` is set before the scheduler is spawned, so these
    values go to the shared multiprocess files and the HTTP server's ``/metrics`` (a
    ``MultiProcessCollector``) shows them beside ``sglang:spec_*``. Never raises: no metrics, with a warning.
    """
    try:
        from ..metrics import SpecdecMetrics

        return SpecdecMetrics(k_max, registry=registry, labelnames=("model_name",), labelvalues=(model_name,))
    except Exception as err:  # noqa: BLE001
        logger.warning("TileSpec: specdec_* metrics disabled: %s", err)
        return None
