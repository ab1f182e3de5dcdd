"""Our options for ``--speculative-algorithm TILESPEC``, from ``--speculative-adaptive-config FILE.json``.

    python -m sglang.launch_server --model-path M --speculative-algorithm TILESPEC \\
        --speculative-draft-model-path D --speculative-adaptive-config tilespec.json

    tilespec.json: {"candidate_steps": [0, 1, 2, 3, 5, 7], "training_log": "/ckpt/train_log.jsonl",
                    "cache_dir": "/var/cache/tilespec", "fallback": {"accept_floor": 0.1}}

The file belongs to tilespec when the algorithm is TILESPEC (SGLang reads it only for its own adaptive
EAGLE policy, which TILESPEC replaces). One pydantic model validates it: an unknown key or a bad value
stops the launch with a message naming the key (``'fallback.window': Input should be greater than or
equal to 1``). No file: every default below.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ..policy.fallback import FallbackConfig
from ..validation import format_validation_error

ALGORITHM = "TILESPEC"
DEFAULT_CANDIDATE_STEPS = (0, 1, 2, 3, 5, 7)


class TileSpecConfigError(ValueError):
    """A bad TILESPEC option: the message names the key (and the file)."""


def _fallback_options_model() -> type[BaseModel]:
    """The core's FallbackConfig, as a strict pydantic model (one definition: the dataclass)."""
    hints = typing.get_type_hints(FallbackConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(FallbackConfig)}

    def _core_checks(self):
        try:
            FallbackConfig(**self.model_dump())
        except ValueError as err:
            raise ValueError(str(err)) from None
        return self

    return create_model("FallbackOptions", __config__=ConfigDict(extra="forbid", strict=False),
                        __validators__={"_core_checks": model_validator(mode="after")(_core_checks)}, **fields)


FallbackOptions = _fallback_options_model()


class TileSpecSGLangConfig(BaseModel):
    """Options of the TILESPEC algorithm. Defaults are what an operator gets without a config file."""

    model_config = ConfigDict(extra="forbid")

    base: Literal["auto", "eagle3", "eagle"] = Field(
        "auto", description="the drafter family underneath; auto: EAGLE3 if the draft's config.json names an "
                            "Eagle3 architecture, else EAGLE")
    candidate_steps: list[int] = Field(
        list(DEFAULT_CANDIDATE_STEPS), description=(
            "step counts SGLang captures CUDA graphs for; the policy chooses among them every decode round "
            "(0 = speculation off). Each costs one draft + one verify graph set of GPU memory"))
    training_log: str | None = Field(None, description=(
        "a draft-training log with per-position accuracies acc_0, acc_1, ... (SpecForge JSON/JSONL): the "
        "acceptance prior before the engine has seen its own outcomes"))
    acceptance_prior: list[float] | float = Field(
        0.6, description="per-position conditional acceptance when no training log is given (one number: "
                         "every position)")
    prior_strength: float = Field(32.0, ge=0, description="pseudo-observations the prior is worth per bin")
    cache_dir: str | None = Field(None, description="profile cache root (default $SPECDEC_CACHE_DIR or ./cache)")
    force_profile: bool = Field(False, description="re-profile even if a valid cache exists")
    profile: bool = Field(True, description="profile at warmup when no valid cache exists")
    profile_repeats: int = Field(20, ge=1, le=1000, description="timed replays per captured graph")
    profile_warmup: int = Field(3, ge=0, le=100)
    profile_budget_s: float = Field(60.0, gt=0, description="wall-clock cap on warmup profiling")
    jump_threshold: float = Field(0.15, gt=0, lt=10)
    calibration_bins: int = Field(20, ge=2, le=1000)
    calibration_save_interval_s: float = Field(60.0, gt=0)
    learn_overhead: bool = Field(True, description="learn the per-step cost outside the verify graph online")
    min_step_gain: float = Field(0.05, ge=0, le=1, description=(
        "speculate in a round only if the plan's predicted goodput beats no speculation by this margin"))
    metrics_interval_s: float = Field(1.0, gt=0, description="how often the scheduler publishes specdec_*")
    enabled: bool = Field(True, description="false: keep SGLang's static EAGLE behaviour at the largest "
                                            "candidate step count, keep the specdec_* metrics")
    fallback: FallbackOptions = Field(default_factory=FallbackOptions)  # type: ignore[valid-type]

    @field_validator("candidate_steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(s < 0 for s in v):
            raise ValueError("must be a non-empty list of non-negative integers")
        out = sorted(set(v))
        if out[-1] < 1:
            raise ValueError("needs at least one step count >= 1 (0 alone never speculates)")
        if out[-1] > 32:
            raise ValueError(f"step count {out[-1]} is above 32")
        return out

    @field_validator("acceptance_prior")
    @classmethod
    def _prior(cls, v):
        vals = [v] if isinstance(v, (int, float)) else list(v)
        if not vals or any(not 0.0 <= float(x) <= 1.0 for x in vals):
            raise ValueError("must be a probability in [0, 1] or a non-empty list of them")
        return v

    @property
    def k_max(self) -> int:
        return self.candidate_steps[-1]

    def fallback_core(self) -> FallbackConfig:
        return FallbackConfig(**self.fallback.model_dump())


def parse_config(raw: Any, source: str = "--speculative-adaptive-config") -> TileSpecSGLangConfig:
    """Validate a decoded JSON object; errors name the key."""
    if raw is None:
        return TileSpecSGLangConfig()
    if not isinstance(raw, dict):
        raise TileSpecConfigError(f"{source} must hold a JSON object, got {type(raw).__name__}")
    digit_keys = sorted(k for k in raw if str(k).isdigit())
    if digit_keys:
        raise TileSpecConfigError(
            f"unknown key {digit_keys[0]!r} in {source}: per-batch-size slots are SGLang's own adaptive EAGLE "
            "format; TILESPEC chooses the step count for every batch size itself (keys: "
            f"{', '.join(sorted(TileSpecSGLangConfig.model_fields))})")
    try:
        return TileSpecSGLangConfig.model_validate(raw)
    except ValidationError as err:
        unknown = [e for e in err.errors() if e["type"] == "extra_forbidden"]
        if unknown:
            loc = ".".join(str(x) for x in unknown[0]["loc"])
            raise TileSpecConfigError(
                f"unknown key {loc!r} in {source} for --speculative-algorithm {ALGORITHM} "
                f"(known: {', '.join(sorted(TileSpecSGLangConfig.model_fields))}; "
                f"fallback.*: {', '.join(sorted(FallbackOptions.model_fields))})") from None
        raise TileSpecConfigError(f"bad {ALGORITHM} option in {source}: {format_validation_error(err)}") from None


def load_config(path: str | None) -> TileSpecSGLangConfig:
    """The config in ``path`` (SGLang's ``speculative_adaptive_config``), or the defaults for None."""
    if not path:
        return TileSpecSGLangConfig()
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except OSError as err:
        raise TileSpecConfigError(f"--speculative-adaptive-config {path}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise TileSpecConfigError(f"--speculative-adaptive-config {path}: not JSON ({err})") from None
    return parse_config(raw, source=f"--speculative-adaptive-config {path}")


def resolve_base(cfg: TileSpecSGLangConfig, draft_model_path: str | None) -> str:
    """'EAGLE3' or 'EAGLE': the configured base, or (auto) what the draft's config.json architecture says."""
    if cfg.base != "auto":
        return cfg.base.upper()
    if not draft_model_path:
        raise TileSpecConfigError(f"--speculative-algorithm {ALGORITHM} needs --speculative-draft-model-path "
                                  "(an EAGLE or EAGLE3 draft)")
    conf = Path(draft_model_path) / "config.json"
    try:
        archs = json.loads(conf.read_text()).get("architectures") or []
    except (OSError, ValueError):
        raise TileSpecConfigError(
            f"'base': 'auto' cannot tell EAGLE from EAGLE3: {conf} is not readable (a hub id?); set \"base\": "
            "\"eagle3\" or \"eagle\" in --speculative-adaptive-config") from None
    return "EAGLE3" if any("eagle3" in str(a).lower() for a in archs) else "EAGLE"
