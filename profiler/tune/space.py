"""The search space of ``specdec tune`` (``space.json``) and the global-batch -> launcher mapping.

    {
      "schema": "specdec_tune_space_v1",
      "params": {
        "global_batch":  {"values": [16, 32, 64, 128]},
        "learning_rate": {"low": 3e-5, "high": 1e-3, "log": true, "grid": [5e-5, 1e-4, 3e-4]},
        "warmup_ratio":  {"values": [0.0, 0.015, 0.05]},
        "accumulation":  {"values": [1, 2]}
      },
      "budget":   {"max_samples": 600000, "min_samples": 22222, "eta": 3},
      "hardware": {"gpus": 8, "max_per_device_batch": 4},
      "baseline": {"global_batch": 32, "learning_rate": 1e-4, "warmup_ratio": 0.015},
      "promote": 3, "noise": 0.05, "n_trials": 12
    }

Parameters (all optional but at least one): ``global_batch`` and ``accumulation`` (integers, ``values``
only), ``learning_rate`` and ``warmup_ratio`` (``values``, or a ``low``/``high`` range, ``log`` for a
log-uniform draw, and ``grid``: the points ``--strategy grid`` uses; default 3 points). A parameter left out
takes the baseline's value (the baseline defaults to SpecForge 0.2.0's: learning rate 1e-4, warmup ratio
0.015, one sample per GPU, no accumulation).

Launcher mapping: global batch = per-device batch x GPUs x accumulation. Without ``accumulation`` in the
space, :func:`batch_mapping` picks the smallest accumulation whose per-device batch fits
``max_per_device_batch``. With it, accumulation is searched and the per-device batch follows; a config whose
split is not whole or does not fit is infeasible and skipped (listed by ``--dry-run``).

``budget``: a full trial consumes ``max_samples`` training samples; hyperband's smallest rung is
``min_samples`` (default ``max_samples / eta**3``), ``eta`` the halving rate. ``promote``: how many of the
proxy's best are measured in serving; ``noise``: the acceptance-length difference (absolute) below which two
measurements are a tie.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UsageError

SCHEMA = "specdec_tune_space_v1"
INT_PARAMS = ("global_batch", "accumulation")
FLOAT_PARAMS = ("learning_rate", "warmup_ratio")
PARAM_ORDER = ("global_batch", "learning_rate", "accumulation", "warmup_ratio")
SPECFORGE_DEFAULTS = {"learning_rate": 1e-4, "warmup_ratio": 0.015}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    values: list[float] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    grid: list[float] | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either values or low/high, not both")
            if not self.values:
                raise ValueError("values must not be empty")
        else:
            if self.low is None or self.high is None:
                raise ValueError("needs values, or both low and high")
            if not self.low <= self.high:
                raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log range needs low > 0")
        return self


class Params(_Strict):
    global_batch: ParamSpec | None = None
    learning_rate: ParamSpec | None = None
    accumulation: ParamSpec | None = None
    warmup_ratio: ParamSpec | None = None


class Budget(_Strict):
    max_samples: int = Field(gt=0)
    min_samples: int | None = Field(default=None, gt=0)
    eta: int = Field(default=3, ge=2)


class Hardware(_Strict):
    gpus: int = Field(default=1, gt=0)
    max_per_device_batch: int = Field(default=1, gt=0)


class Space(_Strict):
    schema_: Literal["specdec_tune_space_v1"] = Field(default=SCHEMA, alias="schema")
    params: Params
    budget: Budget
    hardware: Hardware = Field(default_factory=Hardware)
    baseline: dict[str, float] | None = None
    promote: int = Field(default=3, gt=0)
    noise: float = Field(default=0.05, ge=0)
    n_trials: int = Field(default=12, gt=0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def min_samples(self) -> int:
        b = self.budget
        return b.min_samples or max(1, b.max_samples // b.eta ** 3)

    def specs(self) -> dict[str, ParamSpec]:
        return {k: getattr(self.params, k) for k in PARAM_ORDER if getattr(self.params, k) is not None}


def _loc(err: dict) -> str:
    return ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))


def load_space(path: str | Path) -> Space:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"--space {p}: no such file") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--space {p}: not JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    return parse_space(raw, str(p))


def parse_space(raw, where: str = "space") -> Space:
    try:
        space = Space.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = _loc(e)
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        raise UsageError(f"{where}: {loc or '(top level)'}: {msg}") from None
    specs = space.specs()
    if not specs:
        raise UsageError(f"{where}: params: give at least one of {', '.join(PARAM_ORDER)}")
    for name, spec in specs.items():
        if name in INT_PARAMS:
            if spec.values is None or any(v != int(v) or v < 1 for v in spec.values):
                raise UsageError(f"{where}: params.{name}: needs 'values' of positive integers")
        if name == "warmup_ratio":
            pts = spec.values if spec.values is not None else [spec.low, spec.high]
            if any(not 0 <= v <= 1 for v in pts):
                raise UsageError(f"{where}: params.warmup_ratio: must lie in [0, 1]")
        if name == "learning_rate":
            pts = spec.values if spec.values is not None else [spec.low, spec.high]
            if any(v <= 0 for v in pts):
                raise UsageError(f"{where}: params.learning_rate: must be > 0")
    if space.baseline is not None:
        bad = [k for k in space.baseline if k not in PARAM_ORDER]
        if bad:
            raise UsageError(f"{where}: baseline.{bad[0]}: unknown key (one of {', '.join(PARAM_ORDER)})")
    b = space.budget
    if space.min_samples > b.max_samples:
        raise UsageError(f"{where}: budget.min_samples ({space.min_samples}) exceeds max_samples ({b.max_samples})")
    return space


def space_sha256(space: Space) -> str:
    return hashlib.sha256(json.dumps(space.model_dump(by_alias=True), sort_keys=True).encode()).hexdigest()


def batch_mapping(global_batch: int, gpus: int, max_per_device: int, accumulation: int | None = None
                  ) -> tuple[int, int]:
    """global batch -> (per-device batch, accumulation) for ``gpus`` data-parallel ranks.

    With ``accumulation`` given it is kept (error if the split is not whole or does not fit); otherwise the
    smallest accumulation whose whole per-device batch fits ``max_per_device``."""
    if global_batch < 1 or gpus < 1 or max_per_device < 1:
        raise UsageError(f"batch mapping needs positive numbers (global batch {global_batch}, gpus {gpus}, "
                         f"max per device {max_per_device})")
    if accumulation is not None:
        denom = gpus * int(accumulation)
        if global_batch % denom:
            raise UsageError(f"global batch {global_batch} is not divisible by {gpus} GPU(s) x accumulation "
                             f"{accumulation}")
        per = global_batch // denom
        if per > max_per_device:
            raise UsageError(f"global batch {global_batch} with accumulation {accumulation} on {gpus} GPU(s) "
                             f"needs {per} per device > max {max_per_device}")
        return per, int(accumulation)
    if global_batch % gpus:
        raise UsageError(f"global batch {global_batch} is not divisible by {gpus} GPU(s)")
    per_rank = global_batch // gpus
    for acc in range(1, per_rank + 1):
        if per_rank % acc == 0 and per_rank // acc <= max_per_device:
            return per_rank // acc, acc
    raise AssertionError("unreachable: accumulation = per_rank always fits")


def baseline_config(space: Space, seed_from: dict | None = None) -> dict:
    hw = space.hardware
    base = {"global_batch": hw.gpus, "learning_rate": SPECFORGE_DEFAULTS["learning_rate"],
            "warmup_ratio": SPECFORGE_DEFAULTS["warmup_ratio"]}
    if "accumulation" in space.specs():
        base["accumulation"] = 1
    base.update(space.baseline or {})
    if seed_from:
        base.update({k: v for k, v in seed_from.items() if k in PARAM_ORDER})
    return normalize(base)


def normalize(cfg: dict) -> dict:
    out = {}
    for k in PARAM_ORDER:
        if k in cfg:
            out[k] = int(cfg[k]) if k in INT_PARAMS else float(cfg[k])
    return out


def complete(space: Space, cfg: dict, base: dict) -> dict:
    """A sampled point filled in with the baseline for the parameters the space does not search."""
    full = dict(base)
    full.update(cfg)
    return normalize(full)


def mapping_for(space: Space, cfg: dict) -> tuple[int, int]:
    hw = space.hardware
    return batch_mapping(int(cfg["global_batch"]), hw.gpus, hw.max_per_device_batch, cfg.get("accumulation"))


def feasible(space: Space, cfg: dict) -> bool:
    try:
        mapping_for(space, cfg)
        return True
    except UsageError:
        return False


def config_id(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(normalize(cfg), sort_keys=True).encode()).hexdigest()[:10]


def _draw(spec: ParamSpec, rng: random.Random, is_int: bool):
    if spec.values is not None:
        v = rng.choice(spec.values)
        return int(v) if is_int else float(v)
    if spec.log:
        return float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
    return float(rng.uniform(spec.low, spec.high))


def sample(space: Space, rng: random.Random, base: dict, max_tries: int = 1000) -> dict:
    """One feasible random configuration (deterministic for a seeded ``rng``)."""
    for _ in range(max_tries):
        point = {k: _draw(s, rng, k in INT_PARAMS) for k, s in space.specs().items()}
        cfg = complete(space, point, base)
        if feasible(space, cfg):
            return cfg
    raise UsageError("space: no feasible configuration found in 1000 draws (check global_batch, accumulation "
                     "and hardware.gpus / max_per_device_batch)")


def grid_points(spec: ParamSpec, is_int: bool) -> list:
    if spec.values is not None:
        pts = spec.values
    elif spec.grid is not None:
        pts = spec.grid
    elif spec.low == spec.high:
        pts = [spec.low]
    elif spec.log:
        pts = [math.exp(math.log(spec.low) + i * (math.log(spec.high) - math.log(spec.low)) / 2) for i in range(3)]
    else:
        pts = [spec.low + i * (spec.high - spec.low) / 2 for i in range(3)]
    return [int(v) if is_int else float(v) for v in pts]


def grid(space: Space, base: dict) -> tuple[list[dict], list[dict]]:
    """(feasible, infeasible) configurations of the full grid, in a fixed order."""
    specs = space.specs()
    axes = [grid_points(s, k in INT_PARAMS) for k, s in specs.items()]
    ok, bad = [], []
    for combo in itertools.product(*axes):
        cfg = complete(space, dict(zip(specs, combo)), base)
        (ok if feasible(space, cfg) else bad).append(cfg)
    return ok, bad
