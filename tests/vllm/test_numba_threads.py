"""The prompt-lookup drafter's numba pool: one thread for tilespec engines, the operator's choice respected."""

import os
import subprocess
import sys
import textwrap


# what vLLM's NgramProposer does: numba parallel code, which starts numba's pool (inserted by _run)
RUN_PARALLEL = textwrap.dedent("""
    @numba.njit(parallel=True)
    def f(a):
        s = 0.0
        for i in numba.prange(a.shape[0]):
            s += a[i]
        return s
    f(np.ones(64))""")


def _run(code: str, env: dict) -> str:
    code = textwrap.dedent(code).replace("{RUN_PARALLEL}", RUN_PARALLEL.strip())
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def test_numba_imported_but_idle_gets_a_pool_of_one():
    out = _run("""
        import numba, numpy as np
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        print(limit_numba_threads())
        {RUN_PARALLEL}
        import os
        print(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads(), os.environ["NUMBA_NUM_THREADS"])
    """, {"NUMBA_NUM_THREADS": None, "NUMBA_THREADING_LAYER": None})
    assert out.splitlines()[-1] == "1 1 1"
    assert "this process" in out


def test_drafter_pool_leaves_torch_its_threads():
    """The forward's matmuls keep every core after the drafter ran (numba's OpenMP layer would set them to 1)."""
    out = _run("""
        import torch
        torch.set_num_threads(2)
        import numba, numpy as np
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        limit_numba_threads()
        {RUN_PARALLEL}
        print(numba.threading_layer(), torch.get_num_threads())
    """, {"NUMBA_NUM_THREADS": None, "NUMBA_THREADING_LAYER": None})
    assert out.splitlines()[-1] == "workqueue 2"


def test_operator_setting_is_left_alone():
    out = _run("""
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        import os
        print(limit_numba_threads()); print(os.environ["NUMBA_NUM_THREADS"])
    """, {"NUMBA_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": None})
    assert "NUMBA_NUM_THREADS=2 set by the operator" in out and out.splitlines()[-1] == "2"
    out = _run("""
        from specdec_engine.vllm.numba_threads import limit_numba_threads
        import os
        print(limit_numba_threads()); print(os.environ["NUMBA_THREADING_LAYER"], os.environ["NUMBA_NUM_THREADS"])
    """, {"NUMBA_NUM_THREADS": None, "NUMBA_THREADING_LAYER": "omp"})
    assert "NUMBA_THREADING_LAYER=omp set by the operator" in out and out.splitlines()[-1] == "omp 1"
