#!/usr/bin/env python3
"""Trace-driven goodput simulation of K policies on a measured verify-latency table.

    python benchmarks/goodput_sim.py --latency-csv ../shared/data/h100/llama8b_4layer_verify_latency.csv \
        --batch-col B --tokens-col N --latency-col graph_full_fa_ms --json out/goodput.json

Policies: no_spec, static_k1..static_kK, batch_schedule (best fixed K per batch
size in hindsight), tilespec (policy core, learning online), oracle (selector
with the true acceptance probabilities). Prints a table, writes JSON
(``{"results": [...], "summary": [...], "context": {...}}``) and a PNG beside it.
The traffic model is documented in ``specdec_profiler/simulate.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--latency-csv", help="CSV of measured verify latencies (with the three --*-col)")
    src.add_argument("--latency-cache", help="a profile cache folder (cache/<model>_<gpu>_tp<N>/, e.g. from "
                                             "`specdec tiles profile` or engine warmup)")
    p.add_argument("--batch-col")
    p.add_argument("--tokens-col")
    p.add_argument("--latency-col")
    p.add_argument("--per-position-accept", default=None,
                   help="comma-separated conditional acceptance of the median request at depth 1..K "
                        "(default 0.80,0.76,0.73,0.70,0.68,0.66,0.64,0.62); K = how many are given")
    p.add_argument("--draft-cost-ratio", type=float, default=0.0,
                   help="drafter cost per draft step as a fraction of one decode step L(B, B) (default 0)")
    p.add_argument("--steps", type=int, default=2000, help="simulated steps per policy and batch size")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: those in the table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output JSON path (a PNG is written beside it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from specdec_engine.policy import LatencyModel, LatencyModelError
    from specdec_profiler import simulate
    from specdec_profiler.errors import UsageError
    from specdec_profiler.tiles import read_latency_csv

    try:
        if args.latency_cache:
            npz = Path(args.latency_cache) / "latency_model.npz"
            if not npz.is_file():
                raise UsageError(f"--latency-cache {args.latency_cache}: no latency_model.npz there")
            model = LatencyModel.load(npz)
            args.latency_col = "profile"
        else:
            missing = [f"--{n}-col" for n in ("batch", "tokens", "latency") if not getattr(args, f"{n}_col")]
            if missing:
                raise UsageError(f"--latency-csv needs {', '.join(missing)}")
            batch, tokens, lat = read_latency_csv(args.latency_csv, args.tokens_col, args.latency_col,
                                                  args.batch_col)
            model = LatencyModel.fit(batch, tokens, lat)
        ppa = simulate.DEFAULT_PER_POSITION_ACCEPT
        if args.per_position_accept:
            try:
                ppa = tuple(float(x) for x in args.per_position_accept.split(","))
            except ValueError:
                raise UsageError(f"--per-position-accept must be comma-separated numbers, "
                                 f"got {args.per_position_accept!r}") from None
            if not ppa or not all(0 < x < 1 for x in ppa):
                raise UsageError("--per-position-accept values must be in (0, 1)")
        if args.draft_cost_ratio < 0:
            raise UsageError("--draft-cost-ratio must be >= 0")
        if args.steps < 10:
            raise UsageError("--steps must be >= 10")
        batches = None
        if args.batches:
            try:
                batches = [int(b) for b in args.batches.split(",")]
            except ValueError:
                raise UsageError(f"--batches must be comma-separated integers, got {args.batches!r}") from None
    except (UsageError, LatencyModelError) as err:
        print(f"goodput_sim: error: {err}", file=sys.stderr)
        return 2

    cfg = simulate.SimConfig(per_position_accept=ppa, draft_cost_ratio=args.draft_cost_ratio,
                             steps=args.steps, seed=args.seed)
    t0 = time.time()
    bs = batches or sorted({int(b) for b in model.batch_sizes})
    results = simulate.run(model, cfg, bs, progress=lambda b: print(f"  batch {b} done ({time.time() - t0:.0f}s)",
                                                                     file=sys.stderr))
    summary = simulate.summarize(results)
    context = {
        "what": "trace-driven simulation; latency from the measured table, traffic model in specdec_profiler/simulate.py",
        "latency_csv": str(Path(args.latency_csv or args.latency_cache).resolve()), "latency_col": args.latency_col,
        "per_position_accept": list(ppa), "draft_cost_ratio": args.draft_cost_ratio, "steps": args.steps,
        "seed": args.seed, "request_spread_logit": cfg.request_spread, "token_spread_logit": cfg.token_spread,
        "drafter_overconfidence_logit": cfg.overconfidence, "confidence_noise_logit": cfg.confidence_noise,
        "output_len": [cfg.min_len, cfg.max_len], "batches": bs,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(), "host": platform.node(),
        "python": platform.python_version(), "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": [r.to_dict() for r in results], "summary": summary,
                               "context": context}, indent=1) + "\n")
    print_table(results, summary)
    png = out.with_suffix(".png")
    plot(results, summary, png, context)
    print(f"wrote {out} and {png}")
    return 0


def print_table(results, summary) -> None:
    policies = []
    for r in results:
        if r.policy not in policies:
            policies.append(r.policy)
    batches = sorted({r.batch for r in results})
    by = {(r.batch, r.policy): r.tokens_per_s for r in results}
    head = f"{'policy':<15}" + "".join(f"{'B=' + str(b):>11}" for b in batches)
    print("output tokens/s (simulated)")
    print(head)
    print("-" * len(head))
    for p in policies:
        print(f"{p:<15}" + "".join(f"{by[(b, p)]:>11.0f}" for b in batches))
    print("-" * len(head))
    for key, label in (("tilespec_vs_best_baseline", "ts/best"), ("tilespec_vs_oracle", "ts/oracle")):
        print(f"{label:<15}" + "".join(f"{s[key]:>11.3f}" for s in summary))
    print(f"{'best baseline':<15}" + "".join(f"{s['best_baseline']:>11}" for s in summary))


def plot(results, summary, png: Path, context: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in results})
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 8), gridspec_kw={"height_ratios": [2, 1]}, sharex=True)
    styles = {"no_spec": ("black", "-", 2), "batch_schedule": ("tab:green", "--", 2),
              "tilespec": ("tab:red", "-", 2.5), "oracle": ("tab:purple", ":", 2)}
    for name in dict.fromkeys(r.policy for r in results):
        ys = [next(r.tokens_per_s for r in results if r.batch == b and r.policy == name) for b in batches]
        base = [next(r.tokens_per_s for r in results if r.batch == b and r.policy == "no_spec") for b in batches]
        rel = [y / b0 for y, b0 in zip(ys, base)]
        color, ls, lw = styles.get(name, ("0.7", "-", 0.8))
        ax.plot(batches, rel, ls, color=color, lw=lw, label=name if name in styles or name == "static_k1" else None,
                marker="o" if name in styles else None, ms=3)
    ax.set_xscale("log", base=2)
    ax.set_ylabel("output tokens/s relative to no_spec")
    ax.set_title(f"Goodput on {Path(context['latency_csv']).name} ({context['latency_col']}), "
                 f"draft cost ratio {context['draft_cost_ratio']}", fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    labels = ["static K=1..8 (grey)" if lab == "static_k1" else lab for lab in labels]
    ax.legend(handles, labels, fontsize=8)
    ax2.plot(batches, [s["tilespec_vs_best_baseline"] for s in summary], "o-", color="tab:red",
             label="tilespec / best of no_spec, static K, batch_schedule")
    ax2.plot(batches, [s["tilespec_vs_oracle"] for s in summary], "s--", color="tab:purple",
             label="tilespec / oracle")
    ax2.axhline(0.99, color="0.5", ls=":", lw=1)
    ax2.axhline(1.0, color="0.3", lw=0.8)
    ax2.set_xlabel("batch size (concurrent requests)")
    ax2.set_ylabel("ratio")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
