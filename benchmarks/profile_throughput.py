#!/usr/bin/env python3
"""Throughput and peak memory of `specdec profile` (no tokenizer) on a generated access log.

    python benchmarks/profile_throughput.py [--lines 1000000] [--sizes 10000,100000,1000000] [--jobs 1,2]
        [--workdir /tmp/specdec-profile-bench] [--out benchmarks/results/profile_throughput]

Generates one log of ``--lines`` requests (``specdec_profiler.synth_traffic``: the class mix below, six
line shapes, ~4 KB per line; cached in ``--workdir``), takes its first N lines for each size, and
profiles each size with each ``--jobs`` value in a fresh process, so that every run has its own peak
RSS (``VmHWM`` of the profiling process; for jobs > 1 the largest worker's RSS, sampled every 20 ms
with psutil when it is installed).
Flat memory means the peak RSS does not grow from 10k to 1M lines. Prints a table and writes
``profile_throughput.json`` and ``profile_throughput.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MIX = {"chat": 0.45, "code": 0.15, "rewrite": 0.08, "structured": 0.10, "math": 0.08, "reasoning": 0.10,
       "long_context": 0.04}
SHAPES = ("messages", "openai", "messages", "prompt", "conversations", "precounted")

_CHILD = r"""
import json, sys, threading, time
from specdec_profiler import workload_profile as wp

def hwm_kb():  # this process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

peak_workers = [0]
stop = threading.Event()

def sample():  # workers' RSS, sampled every 20 ms (psutil), the largest kept
    try:
        import psutil
    except ImportError:
        return
    me = psutil.Process()
    while not stop.wait(0.02):
        for c in me.children():
            try:
                peak_workers[0] = max(peak_workers[0], c.memory_info().rss // 1024)
            except psutil.Error:
                pass

path, jobs = sys.argv[1], int(sys.argv[2])
th = threading.Thread(target=sample, daemon=True)
th.start()
t0 = time.perf_counter()
c0 = time.process_time()
prof = wp.profile_log(path, progress=False, jobs=jobs)
dt = time.perf_counter() - t0
cpu = time.process_time() - c0
stop.set()
print(json.dumps({"seconds": dt, "cpu_seconds_main": cpu, "requests": prof.requests,
                  "lines": prof.provenance.lines_total, "bytes": prof.provenance.source_bytes,
                  "rss_self_kb": hwm_kb(), "rss_workers_kb": peak_workers[0],
                  "json_backend": prof.provenance.json_backend, "jobs_used": prof.provenance.jobs,
                  "mix": prof.content_class_mix}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="lines of the generated log")
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated prefixes to profile")
    p.add_argument("--jobs", default="1,2", help="comma-separated worker counts (1 = one process)")
    p.add_argument("--workdir", default="/tmp/specdec-profile-bench", help="where the generated logs live")
    p.add_argument("--out", default="benchmarks/results/profile_throughput")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def generate(workdir: Path, lines: int, seed: int) -> Path:
    from specdec_profiler import synth_traffic as st

    workdir.mkdir(parents=True, exist_ok=True)
    stamp = {"lines": lines, "seed": seed, "mix": MIX, "shapes": SHAPES, "lengths": st.LENGTHS}
    path = workdir / f"access-{lines}.jsonl"
    meta = workdir / f"access-{lines}.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == json.loads(json.dumps(stamp)):
        print(f"reusing {path}", file=sys.stderr)
        return path
    t0 = time.perf_counter()
    st.generate(path, lines, MIX, seed=seed, shapes=SHAPES)
    meta.write_text(json.dumps(stamp))
    print(f"generated {path} ({lines:,} lines, {path.stat().st_size / 1e9:.2f} GB) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def prefix(src: Path, n: int) -> Path:
    dst = src.with_name(f"access-{n}-of-{src.stem.split('-')[1]}.jsonl")
    if dst.is_file():
        return dst
    with open(src, "rb") as f, open(dst, "wb") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return dst


def run_one(path: Path, jobs: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(jobs)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"profiling {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
    from specdec_engine.host import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for jobs in sorted({r["jobs"] for r in results}):
        rs = sorted((r for r in results if r["jobs"] == jobs), key=lambda r: r["lines"])
        xs = [r["lines"] for r in rs]
        a.plot(xs, [r["lines_per_s"] for r in rs], "o-", label=f"jobs={jobs}")
        b.plot(xs, [r["peak_rss_mb"] for r in rs], "o-", label=f"jobs={jobs}: profiling process")
        if jobs > 1:
            b.plot(xs, [r["peak_worker_rss_mb"] for r in rs], "s--", label=f"jobs={jobs}: largest worker")
    a.axhline(50_000, color="grey", ls=":", label="50k lines/s")
    for ax, title, unit in ((a, "throughput", "lines/s"), (b, "peak RSS", "MB")):
        ax.set_xscale("log")
        ax.set_xlabel("lines in the log")
        ax.set_ylabel(unit)
        ax.set_title(f"specdec profile: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    b.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = sorted(int(x) for x in args.sizes.split(","))
    jobs_list = [int(x) for x in args.jobs.split(",")]
    if max(sizes) > args.lines:
        raise SystemExit(f"--sizes {max(sizes)} exceeds --lines {args.lines}")
    workdir = Path(args.workdir)
    full = generate(workdir, args.lines, args.seed)
    tiny = prefix(full, 100)
    baseline = run_one(tiny, 1)  # interpreter + imports + one chunk: the floor of the RSS column
    load_before = os.getloadavg()
    results = []
    for n in sizes:
        path = full if n == args.lines else prefix(full, n)
        for jobs in jobs_list:
            r = run_one(path, jobs)
            results.append({"lines": r["lines"], "jobs": jobs, "jobs_used": r["jobs_used"], "seconds": r["seconds"],
                            "lines_per_s": r["lines"] / r["seconds"], "mb_per_s": r["bytes"] / r["seconds"] / 1e6,
                            "bytes_per_line": r["bytes"] / r["lines"], "peak_rss_mb": r["rss_self_kb"] / 1024,
                            "peak_worker_rss_mb": r["rss_workers_kb"] / 1024 if jobs > 1 else None,
                            "cpu_seconds_main": r["cpu_seconds_main"],
                            "requests": r["requests"], "json_backend": r["json_backend"]})
            x = results[-1]
            print(f"{x['lines']:>10,} lines  jobs={jobs}  {x['lines_per_s']:>9,.0f} lines/s  "
                  f"{x['mb_per_s']:>6.0f} MB/s  peak RSS {x['peak_rss_mb']:>6.0f} MB"
                  + (f" (worker {x['peak_worker_rss_mb']:.0f} MB)" if jobs > 1 else ""), file=sys.stderr)
    load_after = os.getloadavg()
    print(f"\n{'lines':>10}{'jobs':>6}{'seconds':>9}{'lines/s':>10}{'MB/s':>7}{'B/line':>8}{'RSS MB':>8}"
          f"{'worker MB':>10}")
    for x in results:
        w = "-" if x["peak_worker_rss_mb"] is None else f"{x['peak_worker_rss_mb']:.0f}"
        print(f"{x['lines']:>10,}{x['jobs']:>6}{x['seconds']:>9.2f}{x['lines_per_s']:>10,.0f}{x['mb_per_s']:>7.0f}"
              f"{x['bytes_per_line']:>8.0f}{x['peak_rss_mb']:>8.0f}{w:>10}")
    print(f"baseline RSS (100-line log): {baseline['rss_self_kb'] / 1024:.0f} MB; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores, shared)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"results": results,
           "context": {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "tool": "specdec profile (profile_log), no --tokenizer, approximate counts",
                       "log": {"generator": "specdec_profiler.synth_traffic", "lines": args.lines, "seed": args.seed,
                               "mix": MIX, "shapes": SHAPES, "path": str(full)},
                       "baseline_rss_mb": baseline["rss_self_kb"] / 1024,
                       "load_average_before": load_before, "load_average_after": load_after,
                       "trials": 1, "note": "one run per cell (the 1M-line log takes 15-30 s per run on 2 cores); "
                                            "each run in a fresh process; page cache warm after generation"}}
    (out / "profile_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, out / "profile_throughput.png")
    print(out / "profile_throughput.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
