"""The ``tilespec`` keys of ``--speculative-config``, validated by one pydantic model.

    vllm serve MODEL --speculative-config '{"method": "tilespec", "base": "ngram",
                                            "num_speculative_tokens": 8, "prompt_lookup_max": 4,
                                            "cache_dir": "/var/cache/tilespec"}'

The dict is split in two: keys this model knows are ours; every other key
must be a field of vLLM's own ``SpeculativeConfig`` and passes through
untouched (``method`` becomes ``base``). A key that is neither stops startup
with a message naming it, and so does a bad value (pydantic names the key).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..policy.fallback import FallbackConfig
from ..policy.policy import DEPTH_COST_FLOOR
from ..validation import format_validation_error

METHOD = "tilespec"
SUPPORTED_BASES = ("ngram", "eagle3", "eagle", "draft_model")
PLANNED_BASES = ("suffix", "mtp")
PROMPT_LOOKUP_BASES = ("ngram", "suffix")  # drafters without a model (no per-token confidence, no drafter KV)


class TileSpecConfigError(ValueError):
    """A bad ``tilespec`` speculative-config: the message names the key."""


class FallbackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_gain: float = Field(0.02, ge=0, le=1)
    accept_floor: float = Field(0.05, ge=0, lt=1)
    window: int = Field(256, ge=1)
    patience_steps: int = Field(32, ge=1)
    probe_interval_steps: int = Field(200, ge=1)
    probe_max_interval_steps: int = Field(3200, ge=1)
    probe_min_drafts: int = Field(16, ge=1)
    probe_max_steps: int = Field(128, ge=1)
    probe_requests: int = Field(8, ge=1)
    resume_steps: int = Field(4, ge=1)
    hysteresis: float = Field(0.05, ge=0, le=1)
    min_dwell_steps: int = Field(64, ge=0)

    def to_core(self) -> FallbackConfig:
        return FallbackConfig(**self.model_dump())


class TileSpecConfig(BaseModel):
    """Our options. Defaults are what an operator gets with ``{"method": "tilespec"}`` alone."""

    model_config = ConfigDict(extra="forbid")

    base: Literal["ngram", "suffix", "eagle3", "eagle", "draft_model", "mtp"] = Field(
        "ngram", description="the drafter tilespec steers")
    cache_dir: str | None = Field(None, description="profile cache root (default $SPECDEC_CACHE_DIR or ./cache)")
    force_profile: bool = Field(False, description="re-profile even if a valid cache exists")
    profile: bool = Field(True, description="profile at warmup when no valid cache exists")
    profile_budget_s: float = Field(120.0, gt=0, description="wall-clock cap on warmup profiling")
    profile_batch_sizes: list[int] | None = Field(
        None, description="batch sizes to profile (default: powers of two up to max_num_seqs, at most 64)")
    profile_context_len: int = Field(512, ge=0, description="KV prefix length per sequence while profiling")
    profile_repeats: int = Field(5, ge=1, le=100)
    profile_warmup: int = Field(2, ge=0, le=100)
    jump_threshold: float = Field(0.15, gt=0, lt=10)
    calibration_bins: int = Field(20, ge=2, le=1000)
    calibration_save_interval_s: float = Field(60.0, gt=0)
    learn_overhead: bool = Field(True, description="learn the per-step cost outside the forward online")
    min_step_gain: float = Field(0.05, ge=0, le=1, description=(
        "verify drafts in a step only if the plan's predicted goodput beats no speculation by this margin "
        "(a guard against model error where the gain would be marginal)"))
    depth_probe_every: int = Field(32, ge=0, description=(
        "model drafters: every this many proposals one is a step deeper and one a step shallower than the "
        "plans ask, so that what a draft step costs is learned from measured steps (0: no probes)"))
    depth_cost_floor: float = Field(DEPTH_COST_FLOOR, ge=0, le=2, description=(
        "model drafters: a further draft step is priced at least this share of the drafter's own timing of "
        "it, whatever the step-time fit says (StepTimeFit.solve_depth)"))
    enabled: bool = Field(True, description="false: verify every draft (vLLM's behaviour), keep metrics")
    k0_fast_path: bool = Field(True, description=(
        "lean path (fast_path.py): each step's drafts return with its output instead of by a second RPC; with "
        "prompt lookup also steps that verify no draft skip vLLM's speculative sampling path"))
    hold_outputs: bool = Field(True, description=(
        "queue a step's outputs for the API server once the next step is on the worker, so that sending them "
        "overlaps the forward instead of delaying the next step's scheduling (output_handoff.py)"))
    fallback: FallbackOptions = Field(default_factory=FallbackOptions)

    @field_validator("profile_batch_sizes")
    @classmethod
    def _positive_sizes(cls, v):
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("must be a non-empty list of positive integers")
        return sorted(set(v)) if v else v

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "TileSpecConfig":
        return cls.model_validate(json.loads(text))


def split_speculative_config(spec: dict[str, Any], vllm_fields: set[str]) -> tuple[dict[str, Any], TileSpecConfig]:
    """Split a ``method: tilespec`` dict into (vLLM SpeculativeConfig dict, our validated config).

    ``vllm_fields``: the field names of this vLLM's SpeculativeConfig.
    """
    if not isinstance(spec, dict):
        raise TileSpecConfigError(f"speculative-config must be a JSON object, got {type(spec).__name__}")
    spec = {str(k).replace("-", "_"): v for k, v in spec.items()}
    if spec.get("method") != METHOD:
        raise TileSpecConfigError(f"not a tilespec config (method={spec.get('method')!r})")
    ours_names = set(TileSpecConfig.model_fields)
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "method":
            continue
        if key in ours_names:
            ours[key] = value
        elif key in vllm_fields:
            theirs[key] = value
        else:
            raise TileSpecConfigError(
                f"unknown key {key!r} in --speculative-config for method 'tilespec': it is neither a tilespec "
                f"option ({', '.join(sorted(ours_names))}) nor a vLLM SpeculativeConfig field")
    try:
        cfg = TileSpecConfig.model_validate(ours)
    except ValidationError as err:
        raise TileSpecConfigError(f"bad tilespec option {format_validation_error(err)}") from None
    if cfg.base not in SUPPORTED_BASES:
        raise TileSpecConfigError(
            f"'base': {cfg.base!r} is not supported by this version of specdec-engine yet "
            f"(supported: {', '.join(SUPPORTED_BASES)})")
    if "num_speculative_tokens" not in theirs:
        raise TileSpecConfigError("'num_speculative_tokens' is required: the largest K tilespec may choose")
    k = theirs["num_speculative_tokens"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise TileSpecConfigError(f"'num_speculative_tokens' must be a positive integer, got {k!r}")
    if "num_speculative_tokens_per_batch_size" in theirs:
        raise TileSpecConfigError("'num_speculative_tokens_per_batch_size' cannot be combined with tilespec: "
                                  "tilespec chooses K itself, per request")
    theirs["method"] = cfg.base
    return theirs, cfg
