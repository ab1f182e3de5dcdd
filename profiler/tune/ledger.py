"""The tuner's durable ledger: JSONL, one record a line, appended as it happens and fsynced.

Records: ``header`` (space hash, strategy, seed: a resumed tune must match), ``rung`` (one proxy read of one
trial at one rung: config, samples, the training record), ``kill`` (successive halving dropped a trial),
``measure`` (one serving measurement of an exported draft: the objective of record), ``result`` (the
verdict). A tune killed at any point resumes from it: finished rung reads and measurements are not
repeated. A torn last line (killed mid-write) is cut off when the ledger is reopened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            self._load()
        self._fh = None

    def _load(self) -> None:
        data = self.path.read_bytes()
        keep = data
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            keep = data[: cut + 1] if cut >= 0 else b""
            with open(self.path, "r+b") as fh:  # drop the torn line so the next append starts clean
                fh.truncate(len(keep))
                fh.flush()
                os.fsync(fh.fileno())
        for n, line in enumerate(keep.decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{n}: not a JSON record ({err.msg})") from None

    def append(self, record: dict) -> dict:
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records.append(record)
        return record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # --- queries used to resume
    def header(self) -> dict | None:
        return next((r for r in self.records if r.get("type") == "header"), None)

    def rung(self, trial: str, samples: int) -> dict | None:
        for r in self.records:
            if r.get("type") == "rung" and r["trial"] == trial and r["samples"] == samples:
                return r
        return None

    def measure(self, trial: str) -> dict | None:
        return next((r for r in self.records if r.get("type") == "measure" and r["trial"] == trial), None)

    def has(self, rtype: str, **match) -> bool:
        return any(r.get("type") == rtype and all(r.get(k) == v for k, v in match.items()) for r in self.records)
