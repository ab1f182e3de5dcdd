"""How a trial is executed: the :class:`TrialRunner` protocol, and the runners behind it.

The search (:mod:`.engine`) only sees this interface:

- ``train(config, until_samples, workdir, resume) -> TrainRecord``: train the draft of ``config`` (a dict of
  ``global_batch``, ``learning_rate``, ``warmup_ratio``, ``accumulation`` plus ``per_device_batch`` and
  ``total_samples``: the full budget, which is the schedule horizon, so a rung is a prefix of the full run)
  until ``until_samples`` samples have been consumed, continuing from ``workdir``'s last checkpoint when
  ``resume``; return the training-log record at that point. The proxy read is its ``simulated_acc_len``
  (``sum_k prod_{i<=k} acc_i`` of the per-position training accuracy), or ``acc_0`` when absent.
- ``measure(export_dir) -> float``: serve the exported draft and return the acceptance length
  (``1 + accepted / drafts`` over a fixed prompt set): the objective of record.

Runners:

- :class:`SyntheticRunner`: a deterministic, cheap stand-in: a pure function of the config and the samples.
  It measures no engine and trains nothing; it exists to test the search (hyperband cuts, resume, the
  champion rule) and for ``--dry-run``-style demos. Its results say nothing about real drafts.
- :class:`LocalEagle3Runner`: the local EAGLE-3 trainer (:mod:`specdec_profiler.eagle3`) and the vLLM
  acceptance measurement (see its docstring for what was and was not run).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from ..eagle3.logs import simulated_acc_len  # torch-free (the trainer itself is imported lazily)
from ..errors import UsageError


@dataclass
class TrainRecord:
    per_position_acc: list[float]
    loss: float
    samples_seen: int
    simulated_acc_len: float
    export_dir: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def proxy(self) -> float:
        if self.simulated_acc_len is not None:
            return float(self.simulated_acc_len)
        return float(self.per_position_acc[0])

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class TrialRunner(Protocol):
    name: str

    def train(self, config: dict, until_samples: int, workdir: Path, resume: bool) -> TrainRecord: ...

    def measure(self, export_dir: str) -> float: ...


class SyntheticRunner:
    """Deterministic stand-in runner (a pure function of the config): tests the search, not an engine.

    Proxy: per-position accuracy ``q(config) * (1 - exp(-samples / tau(config))) * 0.85**i`` for 4 positions,
    with ``q`` peaking at learning rate 3e-4 (log distance), mildly preferring mid-sized batches and a little
    warmup. Objective: ``1 + simulated_acc_len`` at the trained samples, plus a config-dependent
    proxy-to-serving gap (so the serving ranking can differ from the proxy's). ``delay`` seconds per 1000
    samples trained (for kill-and-resume tests). Every train call is appended to ``calls_log`` if given.
    """

    name = "synthetic"

    def __init__(self, delay: float = 0.0, calls_log: str | Path | None = None):
        self.delay = delay
        self.calls_log = Path(calls_log) if calls_log else None

    @staticmethod
    def quality(cfg: dict) -> float:
        lr = math.log10(cfg.get("learning_rate", 1e-4))
        gb = math.log2(cfg.get("global_batch", 32))
        wu = cfg.get("warmup_ratio", 0.015)
        q = 0.85 * math.exp(-((lr + 3.5) ** 2) / 0.8) * math.exp(-((gb - 5.0) ** 2) / 40.0)
        q *= 1.0 - 0.3 * abs(wu - 0.03)
        return max(0.05, min(0.95, q))

    @staticmethod
    def tau(cfg: dict) -> float:
        batch = 1.0 + 0.1 * math.log2(cfg.get("global_batch", 32))
        return 20000.0 * batch * (1e-4 / cfg.get("learning_rate", 1e-4)) ** 0.3

    def acc(self, cfg: dict, samples: int) -> list[float]:
        base = self.quality(cfg) * (1.0 - math.exp(-samples / self.tau(cfg)))
        return [round(base * 0.85 ** i, 6) for i in range(4)]

    def train(self, config: dict, until_samples: int, workdir: Path, resume: bool) -> TrainRecord:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        state = workdir / "synthetic-state.json"
        start = json.loads(state.read_text())["samples"] if (resume and state.exists()) else 0
        if self.calls_log:
            with open(self.calls_log, "a") as fh:
                fh.write(json.dumps({"workdir": str(workdir), "from": start, "until": until_samples}) + "\n")
        if self.delay:
            time.sleep(self.delay * max(0, until_samples - start) / 1000.0)
        acc = self.acc(config, until_samples)
        export = workdir / "export"
        export.mkdir(exist_ok=True)
        (export / "synthetic.json").write_text(json.dumps({"config": config, "samples": until_samples}))
        state.write_text(json.dumps({"samples": until_samples}))
        loss = round(5.0 * (1.0 - acc[0]) + 0.5, 6)
        return TrainRecord(acc, loss, until_samples, round(simulated_acc_len(acc), 6), str(export))

    def measure(self, export_dir: str) -> float:
        info = json.loads((Path(export_dir) / "synthetic.json").read_text())
        cfg = info["config"]
        sal = simulated_acc_len(self.acc(cfg, info["samples"]))
        gap = 0.15 * math.sin(7.0 * math.log10(cfg["learning_rate"]) + cfg["global_batch"] / 16.0)
        return round(1.0 + sal + gap, 6)


class LocalEagle3Runner:
    """The local EAGLE-3 trainer (:mod:`specdec_profiler.eagle3`, ``specdec train --backend local``) behind the
    tuner, and the vLLM measurement.

    ``train`` runs the local backend through ``specdec train``'s own parser (so its defaults and checks apply)
    into ``workdir``: ``--steps ceil(until_samples / global_batch)``, ``--batch global_batch`` (one CPU
    process: per-device batch and accumulation fold into one batch of the same size), ``--lr learning_rate``,
    ``--warmup round(warmup_ratio * full-budget steps)``, ``--no-gate`` (a rung of a few samples is allowed to
    be poor: the proxy ranks it; the gate is for handing a head over, not for triage). The trainer resumes
    from ``workdir/checkpoints``. Its record (``training_log.json`` of the export) gives ``acc``,
    ``loss_last``, ``samples_seen``, ``simulated_acc_len``; ``export_dir`` is ``workdir``.
    Known limits: the trainer's cosine horizon is the rung's step count (it has no separate schedule
    horizon), so a rung is not exactly a prefix of the full run; and it checkpoints every
    ``--checkpoint-every`` steps but not at the final step, so moving to the next rung recomputes the steps
    since the last periodic checkpoint.

    ``measure`` serves the export with vLLM (``{"method": "eagle3", "model": DIR, "num_speculative_tokens":
    K}`` on ``target``) through :class:`specdec_profiler.vllm_server.VLLMServer`, sends a fixed prompt set
    (the first user turns of the corpus, greedy, forced output length) and returns ``1 + accepted / drafts``
    over that window from vLLM's counters. Or pass ``measure_fn``. NOTE: the vLLM path was not run by its
    author (no vLLM may be started in that session); the search around it is tested with the synthetic runner.
    """

    name = "local-eagle3"

    def __init__(self, target: str | None = None, corpus: str | None = None,
                 measure_fn: Callable[[str], float] | None = None, extra_args: list[str] | None = None,
                 num_speculative_tokens: int = 3, n_prompts: int = 16, max_tokens: int = 64, log=None):
        self.target, self.corpus, self.measure_fn = target, corpus, measure_fn
        self.extra_args = list(extra_args or [])
        self.k, self.n_prompts, self.max_tokens = num_speculative_tokens, n_prompts, max_tokens
        self.log = log or (lambda m: None)

    def _need(self) -> None:
        if not self.target or not self.corpus:
            raise UsageError("--runner local-eagle3 needs --target (model folder) and --corpus (JSONL)")

    def train(self, config: dict, until_samples: int, workdir: Path, resume: bool) -> TrainRecord:
        import argparse

        self._need()
        try:
            from .. import train as train_cli
            from ..eagle3.local import run_local
        except ImportError as err:
            raise UsageError(f"--runner local-eagle3: the local EAGLE-3 trainer is not available ({err})") from None
        gb = int(config["global_batch"])
        steps = max(1, math.ceil(until_samples / gb))
        full_steps = max(1, math.ceil(int(config.get("total_samples", until_samples)) / gb))
        warmup = int(round(float(config.get("warmup_ratio", 0.0)) * full_steps))
        parser = argparse.ArgumentParser(prog="specdec")
        train_cli.add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["train", "--backend", "local", "--corpus", str(self.corpus), "--target",
                                  str(self.target), "--out", str(workdir), "--steps", str(steps), "--batch",
                                  str(gb), "--lr", repr(float(config["learning_rate"])), "--warmup",
                                  str(warmup), "--no-gate", *self.extra_args])
        Path(workdir).mkdir(parents=True, exist_ok=True)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            run_local(args, log=self.log)
        rec = json.loads((Path(workdir) / "training_log.json").read_text())
        return TrainRecord([float(a) for a in rec["acc"]], float(rec["loss_last"]), int(rec["samples_seen"]),
                           float(rec["simulated_acc_len"]), str(workdir),
                           {"steps": steps, "warmup": warmup, "gate": rec.get("gate")})

    def prompts(self) -> list[str]:
        out = []
        with open(self.corpus, encoding="utf-8") as fh:
            for line in fh:
                if len(out) >= self.n_prompts:
                    break
                try:
                    conv = json.loads(line).get("conversations") or []
                except (json.JSONDecodeError, AttributeError):
                    continue
                user = next((t.get("content") for t in conv if t.get("role") == "user"), None)
                if user:
                    out.append(str(user))
        if not out:
            raise UsageError(f"--corpus {self.corpus}: no user turns to measure acceptance with")
        return out

    def measure(self, export_dir: str) -> float:
        if self.measure_fn is not None:
            return float(self.measure_fn(export_dir))
        self._need()
        from ..vllm_server import VLLMServer, spec_window

        spec = {"method": "eagle3", "model": str(export_dir), "num_speculative_tokens": self.k}
        import httpx

        with VLLMServer(self.target, speculative_config=spec, max_model_len=2048) as srv:
            before = srv.metrics()
            sent = 0
            for p in self.prompts():
                try:
                    srv.complete(p, max_tokens=self.max_tokens, min_tokens=self.max_tokens, ignore_eos=True)
                    sent += 1
                except httpx.HTTPStatusError as err:  # a prompt longer than the context: skip it, say so
                    if err.response.status_code != 400:
                        raise
                    self.log(f"measure: prompt skipped ({err.response.text[:120]})")
            window = spec_window(before, srv.metrics())
        if not sent:
            raise UsageError(f"--corpus {self.corpus}: no prompt fits the target's context; nothing measured")
        if window["acceptance_length"] is None:
            raise UsageError(f"vLLM reported no drafts while serving {export_dir}: no acceptance to measure")
        return float(window["acceptance_length"])


RUNNERS = {"synthetic": SyntheticRunner, "local-eagle3": LocalEagle3Runner}
