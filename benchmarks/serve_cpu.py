#!/usr/bin/env python3
"""Where a `vllm serve` arm spends CPU: seconds per output token by process and thread, arms under the same load.

    python benchmarks/serve_cpu.py --arms no_spec,tilespec --workload open_gen --concurrency 4 --trials 8

Why: on a 2-core host the throughput of one trial moves by 10-30% with the neighbours' load, so a few percent
of extra work per step (what tilespec adds while speculation is off) cannot be read from tokens/s. CPU time
per output token, split by process (API server, engine core, worker) and thread, says which process does
more work per token, and how much. Every arm is its own server (the arms of `benchmarks/vllm_e2e.py`, same
flags and environment), all up at once (an idle vLLM server uses no CPU: checked here, 0.00 s over 10 s);
trials alternate between them (ABBA). CPU comes from /proc (utime + stime of every thread of the server's
process group) before and after each trial. Note that vLLM's engine core polls its worker while a step runs,
so its CPU tracks wall time, not work. Prints a table; writes JSON + PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_e2e as E  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pgid: int) -> dict[tuple[str, str, str], float]:
    """(process name, thread id, thread name) -> CPU seconds, for every thread of process group ``pgid``."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
            continue
        pname = stat.split("(", 1)[1].rsplit(")", 1)[0]
        for tid in tids:
            try:
                ts = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = ts.rsplit(")", 1)[1].split()
            out[(pname, tid, ts.split("(", 1)[1].rsplit(")", 1)[0])] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drafter", choices=("ngram", "eagle3"), default="ngram")
    p.add_argument("--arms", default="no_spec,tilespec", help="arms of benchmarks/vllm_e2e.py, comma-separated")
    p.add_argument("--workload", choices=("code_edit", "open_gen"), default="open_gen")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--osl", type=int, default=64, help="forced output tokens per request")
    p.add_argument("--out", default="benchmarks/results/serve_cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from specdec_profiler import workloads as W
    from specdec_profiler.loadgen import run_load, summarize

    out = Path(args.out)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    known = E.arm_configs(out / "cache", args.drafter, "-")
    unknown = [a for a in arms if a not in known]
    if not arms or unknown:
        print(f"serve_cpu: error: --arms: unknown arm(s) {unknown or '(none given)'}; choose from "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    if args.trials < 1 or args.concurrency < 1 or args.osl < 1:
        print("serve_cpu: error: --trials, --concurrency and --osl must be >= 1", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    model, head = E.default_models(args.drafter)
    configs = E.arm_configs(out / "cache", args.drafter, head)
    c, n = args.concurrency, max(8, 4 * args.concurrency)
    wl = W.make(args.workload, n * args.trials + max(8, 2 * c))
    servers, trials = {}, collections.defaultdict(list)
    t_start = time.time()
    try:
        for a in arms:
            servers[a] = E._start(a, configs[a], model, out)
            E._warm(servers[a], {args.workload: wl}, (c,), args.osl)
        for t in range(args.trials):
            prompts = wl.prompts[t * n:(t + 1) * n]
            for a in (arms if t % 2 == 0 else arms[::-1]):
                srv = servers[a]
                time.sleep(E.SETTLE_S)  # the other server's spinning worker goes idle first (vllm_e2e.SETTLE_S)
                before = thread_cpu_s(srv.proc.pid)
                recs, wall = asyncio.run(run_load(srv.url, srv.served_model_name, prompts, concurrency=c,
                                                  max_tokens=args.osl, min_tokens=args.osl,
                                                  temperature=wl.temperature))
                after = thread_cpu_s(srv.proc.pid)
                s = summarize(recs, wall)
                per = collections.Counter()
                for key, v in after.items():
                    per[f"{key[0]}/{key[2]}"] += v - before.get(key, 0.0)
                tokens = s["output_tokens_per_s"] * wall
                trials[a].append({"trial": t, "output_tokens_per_s": round(s["output_tokens_per_s"], 2),
                                  "wall_s": round(wall, 3), "output_tokens": round(tokens),
                                  "cpu_s": {k: round(v, 3) for k, v in per.items() if v > 0.005}})
                print(f"[{a}] trial {t}: {s['output_tokens_per_s']:.1f} tok/s, CPU {sum(per.values()):.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    summary = {}
    for a in arms:
        toks = sum(r["output_tokens"] for r in trials[a])
        agg = collections.Counter()
        for r in trials[a]:
            agg.update(r["cpu_s"])
        summary[a] = {"tokens": toks, "sum_tokens_per_s": round(sum(r["output_tokens_per_s"] for r in trials[a]), 1),
                      "cpu_ms_per_token": {k: round(1000 * v / toks, 4) for k, v in agg.most_common()}}
    import vllm

    from specdec_engine.host import cpu_model

    context = {"drafter": args.drafter, "model": str(model), "workload": args.workload, "concurrency": c,
               "requests_per_trial": n, "osl": args.osl, "trials": args.trials, "vllm": vllm.__version__,
               "cpu": cpu_model(),
               "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_start)),
               "wall_s": round(time.time() - t_start, 1)}
    (out / "serve_cpu.json").write_text(json.dumps({"context": context, "summary": summary, "trials": trials},
                                                   indent=1))
    keys = sorted({k for a in arms for k in summary[a]["cpu_ms_per_token"]},
                  key=lambda k: -max(summary[a]["cpu_ms_per_token"].get(k, 0) for a in arms))[:8]
    print(f"CPU ms per output token, {args.workload} c={c}, {args.trials} trials of {n} x {args.osl} tokens")
    print(f"{'process/thread':42s}" + "".join(f"{a:>12s}" for a in arms))
    for k in keys:
        print(f"{k:42s}" + "".join(f"{summary[a]['cpu_ms_per_token'].get(k, 0.0):12.3f}" for a in arms))
    print(f"{'total':42s}" + "".join(f"{sum(summary[a]['cpu_ms_per_token'].values()):12.3f}" for a in arms))
    print(f"{'sum of trials tok/s':42s}" + "".join(f"{summary[a]['sum_tokens_per_s']:12.1f}" for a in arms))
    base = arms[0]
    for a in arms[1:]:
        pairs = [round(y["output_tokens_per_s"] / x["output_tokens_per_s"], 2) for x, y in zip(trials[base], trials[a])]
        print(f"{a} / {base} tok/s per trial: {pairs}")
    _plot(out / "serve_cpu.png", arms, keys, summary, trials, context)
    print(f"wrote {out / 'serve_cpu.json'} and {out / 'serve_cpu.png'}")
    return 0


def _plot(path, arms, keys, summary, trials, context) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = [0.0] * len(arms)
    for k in keys:
        vals = [summary[a]["cpu_ms_per_token"].get(k, 0.0) for a in arms]
        ax1.bar(arms, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_ylabel("CPU ms per output token")
    ax1.legend(fontsize=7)
    ax1.set_title(f"{context['workload']} c={context['concurrency']}: CPU by process/thread")
    for a in arms:
        ax2.plot([r["trial"] for r in trials[a]], [r["output_tokens_per_s"] for r in trials[a]], "o-", label=a)
    ax2.set_xlabel("trial (ABBA order)")
    ax2.set_ylabel("output tokens/s")
    ax2.legend()
    ax2.set_title("throughput per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
