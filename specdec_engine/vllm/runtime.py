"""What tilespec keeps in one vLLM engine-core process: config, cache, latency model, policy.

The warmup wrapper (on the executor) and the scheduler both live in the
engine-core process; the executor profiles before the scheduler exists. This
module is the meeting point: the warmup stores the profile here, the
scheduler takes it. With TP>1 the scheduler is still one object in one
process and every worker executes what it schedules, so every rank follows
the same decision by construction; profiling uses rank 0's timings (all ranks
run each timed forward together, as they must for their collectives).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from ..cache import CacheKey, CalibrationAutosave, ProfileCache, drafter_identity
from ..policy import AcceptanceHistory, Calibration, LatencyModel, TileSpecPolicy
from .config import PROMPT_LOOKUP_BASES, TileSpecConfig

logger = logging.getLogger("specdec_engine.vllm")

ADDITIONAL_CONFIG_KEY = "tilespec"
UNIFORM_KEY = "uniform_full_graph"  # meta.json: uniform K_max steps' forward per batch size (warmup.uniform_table)


def tilespec_config(vllm_config) -> TileSpecConfig | None:
    """Our validated config, if this engine was started with method 'tilespec'."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    raw = extra.get(ADDITIONAL_CONFIG_KEY) if isinstance(extra, dict) else None
    if raw is None:
        return None
    return TileSpecConfig.model_validate(raw)


def engine_drafter(vllm_config, cfg: TileSpecConfig) -> str:
    """The drafter this engine's calibration belongs to (:func:`~specdec_engine.cache.drafter_identity`): the base
    method, with the draft model vLLM loads for a model drafter (``speculative_config.model``)."""
    model = None
    if cfg.base not in PROMPT_LOOKUP_BASES:
        model = getattr(getattr(vllm_config, "speculative_config", None), "model", None)
    return drafter_identity(cfg.base, model)


@dataclass
class EngineRuntime:
    cfg: TileSpecConfig
    k_max: int
    cache: ProfileCache
    key: CacheKey | None = None
    drafter: str | None = None  # engine_drafter: the calibration is loaded only if learned over this drafter
    latency: LatencyModel | None = None
    calibration: Calibration | None = None
    profile_info: dict = field(default_factory=dict)
    history: AcceptanceHistory = field(default_factory=AcceptanceHistory)
    disabled_reason: str | None = None
    _autosave: CalibrationAutosave | None = None

    def make_policy(self) -> TileSpecPolicy | None:
        from .scheduler import REQUEST_GROUPS

        if self.latency is None:
            return None
        n_maps = self.k_max * len(REQUEST_GROUPS)
        if self.calibration is not None and self.calibration.n_positions != n_maps:
            logger.info("TileSpec: cached calibration has %d maps, this engine needs %d (K_max %d x %d request "
                        "groups); starting a new one", self.calibration.n_positions, n_maps, self.k_max,
                        len(REQUEST_GROUPS))
            self.calibration = None
        if self.calibration is None:
            self.calibration = Calibration(n_bins=self.cfg.calibration_bins, n_positions=n_maps)
        policy = TileSpecPolicy(self.latency, self.k_max, calibration=self.calibration,
                                fallback=self.cfg.fallback.to_core(), learn_overhead=self.cfg.learn_overhead,
                                n_groups=len(REQUEST_GROUPS), min_gain=self.cfg.min_step_gain,
                                depth_cost_floor=self.cfg.depth_cost_floor)
        uniform = self.profile_info.get(UNIFORM_KEY)
        if uniform and uniform.get("k_max") == self.k_max:
            policy.selector.set_uniform_steps(uniform["batch_sizes"], uniform["ms"])
        return policy

    def maybe_save_calibration(self, force: bool = False) -> None:
        """Persist the online calibration every ``calibration_save_interval_s`` (atomic; never raises)."""
        if self._autosave is None:
            self._autosave = CalibrationAutosave(self.cfg.calibration_save_interval_s)
        self._autosave.maybe_save(self.cache, self.key, self.latency, self.calibration, profile_meta=self.profile_info,
                                  extra_meta=lambda: {"history_priors": self.history.export_priors()},
                                  force=force, drafter=self.drafter)


_RUNTIMES: dict[int, EngineRuntime] = {}


def runtime_for(vllm_config) -> EngineRuntime | None:
    """The process's runtime for this engine (created on first use), or None if tilespec is not configured."""
    cfg = tilespec_config(vllm_config)
    if cfg is None:
        return None
    rt = _RUNTIMES.get(id(vllm_config))
    if rt is None:
        root = cfg.cache_dir or os.environ.get("SPECDEC_CACHE_DIR") or "cache"
        rt = EngineRuntime(cfg=cfg, k_max=int(vllm_config.speculative_config.num_speculative_tokens),
                           cache=ProfileCache(root))
        _RUNTIMES[id(vllm_config)] = rt
    return rt
