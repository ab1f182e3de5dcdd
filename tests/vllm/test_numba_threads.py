"""The prompt-lookup drafter's numba pool: one thread for tilespec engines, the operator's choice respected."""

import os
import subprocess
import sys
import textwrap


def _run(code: str, env: dict) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def test_numba_imported_but_idle_gets_a_pool_of_one():
    out = _run("""
        import numba, numpy as np
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        print(limit_numba_threads())
        @numba.njit(parallel=True)
        def f(a):
            s = 0.0
            for i in numba.prange(a.shape[0]):
                s += a[i]
            return s
        f(np.ones(64))
        import os
        print(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads(), os.environ["NUMBA_NUM_THREADS"])
    """, {"NUMBA_NUM_THREADS": None})
    assert out.splitlines()[-1] == "1 1 1"
    assert "this process" in out


def test_operator_setting_is_left_alone():
    out = _run("""
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        import os
        print(limit_numba_threads()); print(os.environ["NUMBA_NUM_THREADS"])
    """, {"NUMBA_NUM_THREADS": "2"})
    assert "set by the operator" in out and out.splitlines()[-1] == "2"
