"""``--mode controller``: re-profile new traffic on a schedule, retrain and re-A/B when it drifts.

Each cycle takes the access-log lines appended since the last cycle (a byte offset kept in
``service-state.json``; a log that shrank was rotated and is read from its start), profiles them,
and compares the profile with the reference profile by :mod:`.drift`. The first profile becomes
the reference. Drift above the threshold starts an experiment (phases 1-5 on that cycle's traffic);
when it ends (GO, NO-GO or a red gate) its profile becomes the new reference, so one change of
traffic triggers one retrain, not one per cycle. Fewer new requests than ``--min-requests`` wait for
the next cycle (the offset does not move).

State is in ``service-state.json`` (``controller`` block) and on Prometheus, from the controller's
own registry: ``--metrics-port`` serves it over HTTP, and ``<workdir>/controller/metrics.prom`` is
rewritten every cycle (the node-exporter textfile format). SIGTERM sets the stop flag: a running
phase's command is stopped, the state keeps the last finished phase, the process exits 0.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from .drift import drift as profile_drift
from .phases import Interrupted, LoopOptions, Pipeline, RedGate
from .state import ServiceState, now_iso, save


class ControllerMetrics:
    def __init__(self, port: int | None, textfile: Path):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("specdec_loop_cycles", "controller cycles run", registry=r)
        self.drift = Gauge("specdec_loop_drift", "drift of the last cycle's traffic from the reference profile",
                           registry=r)
        self.threshold = Gauge("specdec_loop_drift_threshold", "drift that starts a retrain", registry=r)
        self.last = Gauge("specdec_loop_last_cycle_timestamp_seconds", "end of the last cycle (unix time)", registry=r)
        self.experiments = Counter("specdec_loop_experiments", "experiments ended, by outcome", ["outcome"],
                                   registry=r)
        self.phase = Gauge("specdec_loop_running_phase", "phase running now (-1: idle)", registry=r)
        self.phase.set(-1)
        self.textfile = textfile
        if port:
            from prometheus_client import start_http_server

            start_http_server(port, addr="127.0.0.1", registry=r)

    def flush(self) -> None:
        from prometheus_client import write_to_textfile

        self.textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(self.textfile), self.registry)


def _new_lines(log: Path, offset: int) -> tuple[bytes, int, bool]:
    """Complete lines appended since ``offset``: (bytes, new offset, rotated)."""
    size = log.stat().st_size
    rotated = size < offset
    if rotated:
        offset = 0
    with open(log, "rb") as f:
        f.seek(offset)
        data = f.read()
    cut = data.rfind(b"\n") + 1
    return data[:cut], offset + cut, rotated


def run(opts: LoopOptions, state: ServiceState, stop: threading.Event, *, interval_s: float, threshold: float,
        max_cycles: int | None, metrics_port: int | None, log) -> int:
    cdir = opts.workdir / "controller"
    m = ControllerMetrics(metrics_port, cdir / "metrics.prom")
    m.threshold.set(threshold)
    cs = state.controller
    cs.drift_threshold = threshold
    log_path = Path(opts.profile)
    if state.current is not None and not state.current.finished:
        log(f"resuming unfinished experiment {state.current.experiment_id}")
        _experiment(opts, state, stop, m, log, state.current.trigger, None)
    while not stop.is_set():
        _cycle(opts, state, stop, m, log, log_path, threshold)
        m.cycles.inc()
        m.last.set(time.time())
        m.flush()
        if max_cycles and cs.cycles >= max_cycles:
            break
        stop.wait(interval_s)
    save(opts.state_path, state)
    m.flush()
    return 0


def _cycle(opts, state, stop, m, log, log_path: Path, threshold: float) -> None:
    cs = state.controller
    data, new_offset, rotated = _new_lines(log_path, cs.log_offset)
    n = data.count(b"\n")
    cs.cycles += 1
    cs.last_cycle_at = now_iso()
    if rotated:
        log(f"{log_path} shrank: rotated, reading it from the start")
    if n < opts.min_requests:
        cs.last_action = f"waiting for traffic: {n} new lines, --min-requests {opts.min_requests}"
        log(cs.last_action)
        save(opts.state_path, state)
        return
    cyc = opts.workdir / "controller" / f"cycle-{cs.cycles:04d}"
    cyc.mkdir(parents=True, exist_ok=True)
    traffic = cyc / "traffic.jsonl"
    traffic.write_bytes(data)
    prof = cyc / "workload-profile.json"
    pipe = Pipeline(LoopOptions(**{**opts.__dict__, "profile": str(traffic)}), state, stop, log)
    pipe.command("profile", ["profile", "--in", str(traffic), "--out", str(prof), "--tokenizer", opts.target,
                             "--no-progress"], cyc)
    cs.log_offset = new_offset
    if cs.reference_profile is None:
        cs.reference_profile = str(prof)
        cs.last_action = f"reference profile set ({n} requests)"
        log(cs.last_action)
        save(opts.state_path, state)
        return
    d = profile_drift(json.loads(Path(cs.reference_profile).read_text()), json.loads(prof.read_text()))
    cs.last_drift = round(d["drift"], 6)
    m.drift.set(d["drift"])
    parts = ", ".join(f"{k} {v:.3f}" for k, v in d["parts"].items())
    if d["drift"] <= threshold:
        cs.last_action = f"no drift: {d['drift']:.3f} <= {threshold} ({parts})"
        log(cs.last_action)
        save(opts.state_path, state)
        return
    cs.last_action = f"drift {d['drift']:.3f} > {threshold} ({parts}): retrain"
    log(cs.last_action)
    state.event("drift", drift=cs.last_drift, parts=d["parts"], cycle=cs.cycles)
    save(opts.state_path, state)
    shutil.copy(prof, cyc / "reference-candidate.json")
    _experiment(opts, state, stop, m, log, f"drift {d['drift']:.3f} at cycle {cs.cycles}", str(traffic))
    if state.current is not None and state.current.finished:
        cs.reference_profile = str(prof)
        save(opts.state_path, state)


def _experiment(opts, state, stop, m, log, trigger: str, traffic: str | None) -> None:
    if traffic is None:  # resuming: the traffic the interrupted experiment was started on
        exp_json = Path(state.current.evidence_dir) / "phase-0-resolve" / "experiment.json"
        cycles = sorted((opts.workdir / "controller").glob("cycle-*/traffic.jsonl"))
        if exp_json.is_file():
            traffic = json.loads(exp_json.read_text())["profile"]
        elif cycles:
            traffic = str(cycles[-1])
    o = LoopOptions(**{**opts.__dict__, "profile": traffic or opts.profile, "start_phase": None})
    pipe = Pipeline(o, state, stop, log)
    m.phase.set(1)
    try:
        outcome = pipe.run(trigger)
    except RedGate as red:
        outcome = "red"
        log(f"red gate: {red}")
    except Interrupted as why:
        log(f"stopped: {why}")
        return
    finally:
        m.phase.set(-1)
    m.experiments.labels(outcome=outcome if outcome in ("GO", "NO-GO", "red") else "stopped").inc()
