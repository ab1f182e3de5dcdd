#!/usr/bin/env python3
"""What the policy costs per engine step, engine-free: plan + depth what-if + learn + step-time fit.

    python benchmarks/policy_cost.py                      # table, JSON + PNG in benchmarks/results/policy_cost
    python benchmarks/policy_cost.py --batches 1,16 --steps 500

The policy runs on the engine's critical path once per step (vLLM: in the
engine-core process, between two forwards, with synchronous scheduling), so
its cost adds to every step's time. On this project's CPU benchmark an
engine step is ~8-15 ms and at concurrency 1 the policy used to take ~0.8 ms
of it (in-process cProfile: ~1,300 numpy calls per step).

Each step replays what the vLLM scheduler does for a drafter family, with
the real ``TileSpecPolicy`` and synthetic but seeded drafts:

- ``model`` (EAGLE-3, draft models): per-token draft probabilities ->
  cumulative confidence; ``plan``; then, off the critical path, ``learn`` on
  outcomes drawn from the confidences, ``deepest_worth`` over confidences
  continued past the proposal (the next depth), the drafter's timing,
  ``observe_step_time`` and the next step's costs.
- ``ngram`` (prompt lookup): scores from each request's acceptance history,
  ``plan``, ``learn`` + shadow outcomes, history updates, step time.

``--digest`` prints a hash of every decision (K per request, depth, gain) so
that a faster implementation can be checked to decide exactly as the old one
did (calibration refits by age are disabled for that). Timings are wall clock
on this machine; they are for comparing implementations in the same run, not
a claim about any GPU host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_latency(k_max: int, batches=(1, 2, 4, 8, 16, 32, 64, 128, 256)):
    """A latency table shaped like a small model's verify forward: a floor, a per-token and a per-sequence
    cost, one tile jump; only its shape matters here."""
    from specdec_engine.policy import LatencyModel

    rows = []
    for b in batches:
        for q in range(1, k_max + 2):
            n = b * q
            rows.append((b, n, 4.0 + 0.004 * n + 0.02 * b + (0.8 if n > 512 else 0.0)))
    return LatencyModel.from_samples(rows)


def run(family: str, batch: int, steps: int, k_max: int, seed: int, digest: bool) -> dict:
    from specdec_engine.policy import AcceptanceHistory, Calibration, ConfidenceExtrapolator, TileSpecPolicy

    groups_n = 4
    if digest:
        Calibration.REFIT_MAX_AGE_S = float("inf")  # refits by age depend on speed: off for a decision digest
    rng = np.random.default_rng(seed)
    pol = TileSpecPolicy(synthetic_latency(k_max), k_max, learn_overhead=True, n_groups=groups_n,
                         calibration=Calibration(n_positions=k_max * groups_n))
    history = AcceptanceHistory()
    ext = ConfidenceExtrapolator(k_max)
    model = family == "model"
    if model:
        pol.use_depth_cost()
    h = hashlib.sha256()
    depth = k_max
    recent = []
    req_quality = rng.uniform(0.3, 0.95, size=batch)  # each request's typical per-token acceptance
    ids = [f"r{i}" for i in range(batch)]
    groups = np.zeros(batch, np.int64)
    times = {"plan": [], "outcome": [], "learn": [], "step": []}
    for step in range(steps):
        t0 = time.perf_counter()
        # --- the critical path: between the step's drafts arriving and the step going to the worker
        n_avail = np.full(batch, depth if model else k_max, np.int64)
        n_avail[rng.random(batch) < 0.1] = 0  # requests without drafts this step (just admitted, at max_tokens)
        if model:
            probs = np.clip(rng.normal(req_quality[:, None], 0.1, size=(batch, k_max)), 0.01, 1.0)
            probs[np.arange(k_max)[None, :] >= n_avail[:, None]] = np.nan
            raw = np.cumprod(probs, axis=1)
        else:
            raw = history.scores(ids, k_max, n_avail, groups.tolist())
        plan = pol.plan(raw, n_avail, extra_tokens=0, extra_seqs=0, groups=groups, extra_outputs=0)
        if model:
            pol.note_depth(depth, plan=plan)
        t1 = time.perf_counter()
        # --- outcomes: counted at once (metrics), prompt-lookup history at once (the next plan scores by it)
        u = rng.random((batch, k_max))
        run_len = np.argmax(u > req_quality[:, None], axis=1)
        run_len[(u <= req_quality[:, None]).all(axis=1)] = k_max
        acc = np.minimum(run_len, plan.k)
        k_arr, acc_arr = pol.count(plan.k, acc)
        if not model:
            for i, rid in enumerate(ids):
                k = int(plan.k[i])
                history.observe(rid, int(acc[i]), int(acc[i] < k or run_len[i] == k), int(groups[i]))
        t2 = time.perf_counter()
        # --- off the critical path (the vLLM adapter: while the worker runs the next forward)
        pol.learn(raw, k_arr, acc_arr, groups, plan=plan, counted=True)
        if not model:
            zero = np.flatnonzero((plan.k == 0) & ~np.isnan(raw[:, 0]))
            pol.learn_shadow(raw[zero, 0], (run_len[zero] > 0).astype(float), groups[zero])
        else:  # as TileSpecScheduler._answer_depth: the next depth is the depth what-if's answer
            limit = np.full(batch, k_max, np.int64)
            want = pol.deepest_worth(ext.extend(raw, limit), limit, groups=groups) if plan.k.any() else 0
            recent = (recent + [want])[-2:]
            depth = int(min(k_max, max(1, max(recent))))
            ext.observe(probs)
            pol.observe_drafter(batch, depth, 0.5 + 0.3 * depth, 0.5, 0.3)
        pol.observe_step_time(6.0 + 0.01 * batch + 0.05 * float(plan.k.sum()) + rng.normal(0, 0.3), plan=plan)
        pol.prepare_step_costs(batch)
        t3 = time.perf_counter()
        times["plan"].append(t1 - t0)
        times["outcome"].append(t2 - t1)
        times["learn"].append(t3 - t2)
        times["step"].append(t2 - t0)
        if digest:
            h.update(plan.k.tobytes())
            h.update(np.int64(depth).tobytes())
            g = plan.selection.gain if plan.selection is not None else -1.0
            h.update(np.float64(round(g, 9)).tobytes())
    skip = min(steps // 5, 100)  # warm-up: the calibration refits every call until it has 1,000 pairs
    out = {"family": family, "batch": batch, "k_max": k_max, "steps": steps}
    for name, xs in times.items():
        xs = xs[skip:]
        out[f"{name}_us_median"] = round(statistics.median(xs) * 1e6, 1)
        out[f"{name}_us_mean"] = round(statistics.mean(xs) * 1e6, 1)
    if digest:
        out["digest"] = h.hexdigest()[:16]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="model,ngram")
    p.add_argument("--batches", default="1,4,16,64,256")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--k-max", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digest", action="store_true", help="print a hash of all decisions (implementation checks)")
    p.add_argument("--out", default="benchmarks/results/policy_cost")
    args = p.parse_args(argv)
    rows = []
    for fam in args.families.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            r = run(fam, b, args.steps, args.k_max, args.seed, args.digest)
            rows.append(r)
            print(f"{fam:>6} B={b:<4} critical path {r['step_us_median']:>7.1f} us (plan {r['plan_us_median']:>7.1f}, "
                  f"outcome {r['outcome_us_median']:>6.1f}; mean {r['step_us_mean']:.1f})  off the path "
                  f"{r['learn_us_median']:>7.1f} us"
                  + (f"  digest {r['digest']}" if args.digest else ""), flush=True)
    if args.digest:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from specdec_engine.host import cpu_hardware

    context = {"hardware": f"{cpu_hardware()}, {platform.machine()}", "python": platform.python_version(),
               "numpy": np.__version__, "k_max": args.k_max, "steps": args.steps,
               "what": "median wall time per simulated engine step of the TileSpec policy (no engine)"}
    (out / "policy_cost.json").write_text(json.dumps({"context": context, "results": rows}, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for fam in args.families.split(","):
        rs = [r for r in rows if r["family"] == fam]
        ax.plot([r["batch"] for r in rs], [r["step_us_median"] for r in rs], marker="o", label=f"{fam}: per step")
        ax.plot([r["batch"] for r in rs], [r["plan_us_median"] for r in rs], marker=".", ls="--",
                label=f"{fam}: plan only")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("requests in the step")
    ax.set_ylabel("microseconds (median)")
    ax.set_title(f"TileSpec policy cost per step, K_max={args.k_max} ({cpu})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "policy_cost.png", dpi=110)
    print(f"wrote {out / 'policy_cost.json'} and {out / 'policy_cost.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
