"""``service-state.json`` (schema ``specdec_service_v1``): what is served, what won, what the loop is doing.

Written atomically (temp file, fsync, rename) after every phase, so a loop killed at any instant
leaves either the previous state or the new one, never half of one. One loop at a time: an
exclusive ``flock`` on ``<state>.lock`` for the loop's lifetime; a second loop fails at once naming
the holder's pid. The ``current`` block is the resume point: the experiment in progress, the phases
it finished with their gates and outputs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UsageError

SCHEMA_ID = "specdec_service_v1"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class PhaseRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["done", "skipped", "red"]
    gate: str = Field(description="why the gate is green/red, in one line")
    outputs: dict[str, Any] = Field(default_factory=dict)
    finished_at: str = Field(default_factory=now_iso)


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment_id: str
    evidence_dir: str
    method: str
    trigger: str = Field(description="oneshot, or the controller's reason (drift value)")
    started_at: str = Field(default_factory=now_iso)
    phases: dict[str, PhaseRecord] = Field(default_factory=dict, description="phase number -> record")
    finished: bool = False

    def done(self, n: int) -> bool:
        rec = self.phases.get(str(n))
        return rec is not None and rec.status in ("done", "skipped")


class ControllerState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cycles: int = 0
    last_cycle_at: str | None = None
    last_drift: float | None = None
    drift_threshold: float | None = None
    log_offset: int = Field(0, description="bytes of the access log already consumed")
    reference_profile: str | None = Field(None, description="the profile drift is measured against")
    last_action: str | None = None


class ServiceState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: Literal["specdec_service_v1"] = Field(SCHEMA_ID, alias="schema")
    experiment_id: str | None = Field(None, description="the latest experiment")
    target: str
    served_deploy: str
    standing_config: dict[str, Any] | None = Field(description="the --speculative-config now served (null: none)")
    champion_draft: str | None = None
    last_profile_sha256: str | None = None
    last_ab_verdict: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    current: Experiment | None = None
    controller: ControllerState = Field(default_factory=ControllerState)

    def event(self, kind: str, **fields: Any) -> None:
        self.history.append({"at": now_iso(), "event": kind, **fields})


def load(path: Path) -> ServiceState | None:
    if not path.exists():
        return None
    try:
        return ServiceState.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as err:
        first = err.errors()[0] if isinstance(err, ValidationError) else None
        where = ".".join(str(x) for x in first["loc"]) if first else "(not JSON)"
        raise UsageError(f"{path}: not a {SCHEMA_ID} state file ({where}: {first['msg'] if first else err}); "
                         "move it aside to start over") from None


def save(path: Path, state: ServiceState) -> None:
    from specdec_engine.cache import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (state.model_dump_json(by_alias=True, indent=1) + "\n").encode())


class StateLock:
    """Exclusive lock on ``<state>.lock`` (released by the kernel if the process dies)."""

    def __init__(self, state_path: Path):
        self.path = state_path.with_name(state_path.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> "StateLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise UsageError(f"another specdec loop (pid {holder}) holds {self.path}; one loop per state file") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def parse_config(text: str, flag: str = "--standing-config") -> dict[str, Any] | None:
    """A speculative config as JSON text or a path to a JSON file; ``none``/``{}`` mean no speculation."""
    raw = text.strip()
    if raw.lower() in ("none", "null", "{}", ""):
        return None
    if not raw.startswith("{"):
        p = Path(raw)
        if not p.is_file():
            raise UsageError(f"{flag}: neither JSON nor a file: {raw[:80]}")
        raw = p.read_text()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if obj is None or obj == {}:
        return None
    if not isinstance(obj, dict) or "method" not in obj:
        raise UsageError(f"{flag}: a speculative config is a JSON object with a 'method' key, got {raw[:80]}")
    return obj
