"""Where a serving step's time goes, per vLLM process: ``SPECDEC_PHASE_TIMER=N`` (a diagnostic, off by default).

    SPECDEC_PHASE_TIMER=500 vllm serve MODEL --speculative-config '...'
    # every 500 engine steps, each process logs, per phase: wall ms per step, the thread's CPU ms, calls per step:
    # TileSpec phases (EngineCore, 500 steps; ...): EngineCore.step 6.21 ms (cpu 6.18) x1.00; ...

Why: with vLLM's multiprocess executor the engine core and the worker busy-wait on each other (shared-memory
queues spin for a second after each message), so CPU time per process tracks wall time and says nothing about
where the work is; and on a 2-core host throughput moves by tens of percent between trials. Timing the phases
of each step inside each process does not depend on either. Installed by the plugin in every vLLM process
when the variable is set, for any speculative method (so a static-K server can be compared with a tilespec
one), after our own wrappers (their time is included in the phase they wrap). Each wrapper keeps the wrapped
signature (``functools.wraps``), so ``compat.check`` still sees vLLM's parameters. Times are inclusive: a
phase that calls another contains it. Wall time well above the thread's CPU time is time spent waiting: for
the GIL (another thread of the process) or for a core.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import time

logger = logging.getLogger("specdec_engine.vllm")
ENV = "SPECDEC_PHASE_TIMER"

# (label, "module:Class.method"); the first of each process that runs is its tick (one call per step)
TARGETS = (
    ("EngineCore.step", "vllm.v1.engine.core:EngineCore.step"),
    ("EngineCore.post_step", "vllm.v1.engine.core:EngineCore.post_step"),
    ("Scheduler.schedule", "vllm.v1.core.sched.scheduler:Scheduler.schedule"),
    ("Scheduler.update_from_output", "vllm.v1.core.sched.scheduler:Scheduler.update_from_output"),
    ("Scheduler.get_grammar_bitmask", "vllm.v1.core.sched.scheduler:Scheduler.get_grammar_bitmask"),
    ("Scheduler.update_draft_token_ids", "vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids"),
    ("Executor.execute_model", "vllm.v1.executor.multiproc_executor:MultiprocExecutor.execute_model"),
    ("Executor.sample_tokens", "vllm.v1.executor.multiproc_executor:MultiprocExecutor.sample_tokens"),
    ("Executor.take_draft_token_ids", "vllm.v1.executor.multiproc_executor:MultiprocExecutor.take_draft_token_ids"),
    ("Runner.execute_model", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.execute_model"),
    ("Runner.sample_tokens", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sample_tokens"),
    ("Runner._update_states", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._update_states"),
    ("Runner._prepare_inputs", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs"),
    ("Runner._build_attention_metadata", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._build_attention_metadata"),
    ("Runner._preprocess", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._preprocess"),
    ("Runner._model_forward", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._model_forward"),
    ("Runner._bookkeeping_sync", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._bookkeeping_sync"),
    ("Runner.propose_draft_token_ids", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids"),
    ("Runner.take_draft_token_ids", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids"),
    ("Proposer.propose", "vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer.propose"),
    ("Msgpack.encode_into", "vllm.v1.serial_utils:MsgpackEncoder.encode_into"),
    ("Msgpack.encode", "vllm.v1.serial_utils:MsgpackEncoder.encode"),
    ("TileSpecScheduler.schedule", "specdec_engine.vllm.scheduler:TileSpecScheduler.schedule"),
    ("TileSpecScheduler.update_from_output", "specdec_engine.vllm.scheduler:TileSpecScheduler.update_from_output"),
    ("TileSpecScheduler.get_grammar_bitmask", "specdec_engine.vllm.scheduler:TileSpecScheduler.get_grammar_bitmask"),
    ("TileSpecScheduler._plan", "specdec_engine.vllm.scheduler:TileSpecScheduler._plan"),
    ("TileSpecScheduler._outcomes", "specdec_engine.vllm.scheduler:TileSpecScheduler._outcomes"),
    ("TileSpecPolicy.plan", "specdec_engine.policy.policy:TileSpecPolicy.plan"),
)
TICKS = ("EngineCore.step", "Runner.execute_model")


class PhaseTimer:
    def __init__(self, every: int):
        self.every = max(1, int(every))
        self.stats: dict[str, list] = {}  # label -> [calls, wall seconds, thread CPU seconds] since the last report

    def wrap(self, label: str, fn):
        stats = self.stats.setdefault(label, [0, 0.0, 0.0])
        tick = label in TICKS

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                stats[0] += 1
                stats[1] += time.perf_counter() - t0
                stats[2] += time.thread_time() - c0
                if tick and stats[0] >= self.every:
                    self.report(label)

        timed._specdec_phase_timer = True
        return timed

    def report(self, tick: str) -> None:
        steps = self.stats[tick][0]
        parts = [f"{label} {s / steps * 1e3:.3f} ms (cpu {cpu / steps * 1e3:.3f}) x{c / steps:.2f}"
                 for label, (c, s, cpu) in self.stats.items() if c]
        logger.info("TileSpec phases (%s, %d steps; wall ms per step, this thread's CPU ms, calls per step): %s",
                    tick.split(".")[0], steps, "; ".join(parts))
        for s in self.stats.values():
            s[0], s[1], s[2] = 0, 0.0, 0.0


def install_from_env() -> PhaseTimer | None:
    """Wrap every importable target in this process when ``SPECDEC_PHASE_TIMER`` is set; None otherwise."""
    raw = os.environ.get(ENV, "")
    if not raw or raw == "0":
        return None
    try:
        every = int(raw)
    except ValueError:
        every = 500
    timer = PhaseTimer(every)
    for label, target in TARGETS:
        module_name, _, qual = target.partition(":")
        cls_name, _, attr = qual.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
            fn = cls.__dict__.get(attr)
        except Exception:  # noqa: BLE001 - a diagnostic: a target this vLLM lacks is skipped
            continue
        if fn is None or getattr(fn, "_specdec_phase_timer", False):
            continue
        setattr(cls, attr, timer.wrap(label, fn))
    logger.info("TileSpec: phase timer on (%s=%s): a report every %d steps per process", ENV, raw, timer.every)
    return timer
