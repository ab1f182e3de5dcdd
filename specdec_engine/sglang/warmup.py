"""Warmup profiling: time replays of the verify graphs SGLang captured for every candidate step count. GPU-only.

Runs in the scheduler process at the end of ``TileSpecEagleWorker.init_cuda_graphs``, after SGLang has
allocated the KV cache and captured, through the adaptive controller, one runtime state per candidate
step count s: a verify CUDA graph runner whose graphs process ``bs * (s + 1)`` tokens for each captured
batch size bs, and a draft graph runner. For each (s, bs) the captured graphs are replayed
(``DecodeCudaGraphRunner.backend._graphs[ShapeKey(size=bs)].replay()`` inside the backend's replay
session) between CUDA events, in a shuffled order with a fixed seed, ``profile_repeats`` times after
``profile_warmup`` untimed replays:

- verify replays become the latency table ``(bs, bs * (s + 1), ms)`` of ``latency_model.npz`` (the same
  cache format as the vLLM adapter: ``cache/<model>_<gpu>_tp<N>/``, engine "sglang");
- draft replays give the drafter's cost per step count (median over batch sizes), stored in meta.json
  (``sglang.draft_cost_ms``) and handed to the selector as its cost by longest draft.

Replaying a captured graph re-runs its kernels on the dummy inputs of the capture (KV writes go to the
padding slot that capture used), so nothing of a request is touched; nothing is being served yet.

A valid cache for the same key (model, GPU, TP, dtype, SGLang version) whose grid covers the captured
(steps, batch sizes) is reused ("TileSpec: already profiled, skipping"). With TP > 1 rank 0 decides
(cached / profile / off), every rank replays the same graphs in the same order (their collectives must
meet), and rank 0's timings and calibration are broadcast. Any failure leaves SGLang serving EAGLE at
the largest candidate step count, and says why in the log.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np

from ..cache import CacheKey
from ..policy import Calibration, LatencyModel
from . import compat

logger = logging.getLogger("specdec_engine.sglang")


def cache_key(server_args, device: str, tp_size: int) -> CacheKey:
    return CacheKey(model=str(getattr(server_args, "model_path", "unknown")), gpu=device, tp=int(tp_size),
                    dtype=str(getattr(server_args, "dtype", "auto")).replace("torch.", ""), engine="sglang",
                    engine_version=compat.sglang_version())


def graph_grid(states: dict) -> dict[int, list[int]]:
    """{steps: [captured batch sizes]} of the verify graphs of every runtime state."""
    return {int(s): [bs for bs, _ in compat.iter_verify_graphs(getattr(st, "target_graph_runner", None))]
            for s, st in sorted(states.items())}


def covers(meta: dict, grid: dict[int, list[int]]) -> bool:
    have = {int(k): set(v) for k, v in ((meta.get("grid") or {}).get("steps_batch_sizes") or {}).items()}
    return bool(grid) and all(s in have and set(bs) <= have[s] for s, bs in grid.items())


def draft_cost_by_steps(draft_ms: dict[int, list[float]], k_max: int) -> list[float]:
    """Cost (ms) of drafting k steps for k = 0..k_max: measured medians, linear in between, 0 for k = 0."""
    known = sorted((int(s), float(np.median(v))) for s, v in draft_ms.items() if v and int(s) > 0)
    if not known:
        return [0.0] * (k_max + 1)
    xs = [0] + [s for s, _ in known]
    ys = [0.0] + [m for _, m in known]
    return [float(np.interp(k, xs, ys)) for k in range(k_max + 1)]


def profile_graphs(states: dict, repeats: int, warmup: int, budget_s: float):
    """Replay every captured verify (and draft) graph; (verify samples, draft ms by steps, seconds, truncated)."""
    import torch

    points = []
    for steps, st in sorted(states.items()):
        for bs, graph in compat.iter_verify_graphs(getattr(st, "target_graph_runner", None)):
            points.append(("verify", int(steps), bs, graph, st.target_graph_runner))
        draft_runner = getattr(st, "cuda_graph_runner", None)
        if steps > 0 and draft_runner is not None:
            for bs, graph in compat.iter_verify_graphs(draft_runner):
                points.append(("draft", int(steps), bs, graph, draft_runner))
    if not points:
        raise RuntimeError("no captured CUDA graphs to time (is --disable-cuda-graph set?)")

    def timed(graph, runner) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with compat.replay_session(runner):
            start.record()
            graph.replay()
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    t0 = time.perf_counter()
    for _ in range(warmup):
        for _, _, _, graph, runner in points:
            timed(graph, runner)
    samples: list[tuple[int, int, float]] = []
    draft_ms: dict[int, list[float]] = {}
    rng = random.Random(0)
    truncated = False
    for _ in range(repeats):
        order = points[:]
        rng.shuffle(order)
        for kind, steps, bs, graph, runner in order:
            ms = timed(graph, runner)
            if kind == "verify":
                samples.append((bs, bs * (steps + 1), ms))
            else:
                draft_ms.setdefault(steps, []).append(ms)
        if time.perf_counter() - t0 > budget_s:
            truncated = True
            break
    return samples, draft_ms, round(time.perf_counter() - t0, 3), truncated


def run(worker) -> None:
    """Load or measure the latency model for this worker's runtime (never raises)."""
    rt = worker.tilespec
    cfg = rt.cfg
    t0 = time.perf_counter()
    try:
        import torch

        device = torch.cuda.get_device_name(torch.cuda.current_device())
        rt.key = cache_key(worker.server_args, device, rt.tp_size)
        states = dict(compat.controller_states(worker.adaptive_controller))
        grid = graph_grid(states)
        decision = None
        if rt.tp_rank == 0:
            entry = None if cfg.force_profile else rt.cache.load(rt.key, rt.drafter)
            if entry is not None and covers(entry.meta, grid):
                decision = ("cached", _payload(entry.latency, entry.calibration,
                                               (entry.meta.get("sglang") or {}).get("draft_cost_ms", 0.0),
                                               {k: entry.meta[k] for k in ("grid", "profile") if k in entry.meta}),
                            str(entry.directory))
            elif not cfg.profile:
                decision = ("off", "no valid profile cache and profiling is off ('profile': false)")
            else:
                decision = ("profile", entry.calibration.to_arrays() if entry and entry.calibration else None)
        decision = compat.broadcast_from_tp_rank0(decision)
        if decision[0] == "off":
            rt.disabled_reason = decision[1]
            return
        if decision[0] == "cached":
            _apply(rt, decision[1])
            logger.info("TileSpec: already profiled, skipping warmup profiling (%s)", decision[2])
            return
        logger.info("TileSpec: profiling the captured verify graphs on %s: steps x batch sizes %s (%d repeats, "
                    "budget %.0f s)", device, grid, cfg.profile_repeats, cfg.profile_budget_s)
        samples, draft_ms, seconds, truncated = profile_graphs(states, cfg.profile_repeats, cfg.profile_warmup,
                                                               cfg.profile_budget_s)
        latency = LatencyModel.from_samples(samples, jump_threshold=cfg.jump_threshold)
        cost = draft_cost_by_steps(draft_ms, cfg.k_max)
        info = {"grid": {"steps_batch_sizes": {str(s): bs for s, bs in grid.items()},
                         "repeats": cfg.profile_repeats, "truncated": truncated},
                "profile": {"seconds": seconds, "device": device, "what": "CUDA-graph replays of SGLang's verify "
                            "(and draft) graphs per candidate step count"},
                "sglang": {"draft_cost_ms": cost, "candidate_steps": cfg.candidate_steps}}
        cal = Calibration.from_arrays(decision[1]) if decision[1] is not None else None
        payload = compat.broadcast_from_tp_rank0(_payload(latency, cal, cost, info))
        _apply(rt, payload)
        if rt.tp_rank == 0:
            saved = rt.cache.save(rt.key, rt.latency, rt.calibration, extra_meta=info, drafter=rt.drafter)
            desc = rt.latency.describe()
            logger.info("TileSpec: profiled %d points in %.1f s (boundaries %s, MAPE %.2f%%), draft cost by steps "
                        "%s ms; cache %s", desc["n_points"], seconds, desc["boundaries"], desc["mape"],
                        [round(c, 3) for c in cost], saved if saved else "not written (in memory only)")
    except Exception as err:  # noqa: BLE001 - profiling must never take the server down
        rt.disabled_reason = f"warmup profiling failed: {type(err).__name__}: {err}"
        logger.exception("TileSpec: %s", rt.disabled_reason)
    finally:
        logger.info("TileSpec: warmup took %.1f s", time.perf_counter() - t0)


def _payload(latency: LatencyModel, calibration: Calibration | None, draft_cost, info: dict) -> dict:
    return {"latency": latency.to_arrays(), "calibration": None if calibration is None else calibration.to_arrays(),
            "draft_cost_ms": draft_cost, "profile_info": info}


def _apply(rt, payload: dict) -> None:
    rt.latency = LatencyModel.from_arrays(payload["latency"])
    rt.calibration = Calibration.from_arrays(payload["calibration"]) if payload["calibration"] is not None else None
    rt.draft_cost_ms = payload["draft_cost_ms"]
    rt.profile_info = payload["profile_info"]
