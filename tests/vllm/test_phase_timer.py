"""SPECDEC_PHASE_TIMER's wrapper: keeps the wrapped signature (compat.check reads it), reports per tick."""
import inspect
import logging

from specdec_engine.vllm import phase_timer


def test_a_timed_method_keeps_its_signature_and_reports_per_step():
    timer = phase_timer.PhaseTimer(every=3)

    def step(self, scheduler_output, model_runner_output=None):
        return scheduler_output

    def inner(self, x):
        return x * 2

    timed_step = timer.wrap("EngineCore.step", step)  # a tick: one call per engine step
    timed_inner = timer.wrap("Scheduler.schedule", inner)
    assert list(inspect.signature(timed_step).parameters) == ["self", "scheduler_output", "model_runner_output"]
    # a handler of our own on the module's logger: caplog saw each record up to 3 times in the full suite
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log = phase_timer.logger
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    try:
        for i in range(3):
            assert timed_inner(None, i) == 2 * i
            assert timed_step(None, i) == i
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = [r.getMessage() for r in records if "TileSpec phases" in r.getMessage()]
    assert len(lines) == 1 and "3 steps" in lines[0] and "Scheduler.schedule" in lines[0] and "x1.00" in lines[0]
    assert timer.stats["EngineCore.step"][0] == 0  # counters start again after a report


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv(phase_timer.ENV, raising=False)
    assert phase_timer.install_from_env() is None
    monkeypatch.setenv(phase_timer.ENV, "0")
    assert phase_timer.install_from_env() is None
