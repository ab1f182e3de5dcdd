"""`specdec tiles profile`: time verify forwards of a model shape on a GPU and write the engine's cache.

    specdec tiles profile --hf-config meta-llama-3.1-8b/config.json --batch-sizes 1-128 --k 8 \
        --context-len 512 --out cache/

Builds the model from its config with random weights (``decoder.py``), then
for each batch size B (powers of two first, so a cut-short sweep still spans
the range) and q = 1..K+1 tokens per sequence captures the verify forward in a
CUDA graph and times its replays with CUDA events (median of ``--repeats``
after warm-up). Every measured point is appended to
``<out>/<key>.partial.jsonl`` as it is measured, so an interrupted run, an
out-of-memory point or a crash loses nothing: ``--resume`` continues from it.
The sweep stops when the grid is done, or when ``--budget-s`` is spent and at
least ``--min-samples`` points over ``--min-unique-counts`` token counts are
measured. Every fifth point is held back from a first fit to report the
model's prediction error on points it did not see; the cache is then fitted
on all points and written as the engine reads it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from specdec_engine.cache import CacheKey, ProfileCache
from specdec_engine.policy import LatencyModel

from .errors import UsageError

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


def load_config(text: str) -> dict:
    """A path to config.json (or its folder), or inline JSON."""
    t = text.strip()
    if t.startswith("{"):
        try:
            return json.loads(t)
        except json.JSONDecodeError as err:
            raise UsageError(f"--hf-config: inline JSON does not parse: {err}") from None
    p = Path(t)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise UsageError(f"--hf-config: {p}: no such file")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise UsageError(f"--hf-config: {p}: {err}") from None


class _Timer:
    """Times one (B, q) verify step: CUDA graph + events on a GPU, host clock on the CPU."""

    def __init__(self, model, vocab: int, device, repeats: int, warmup: int):
        self.model, self.vocab, self.device = model, vocab, device
        self.repeats, self.warmup = repeats, warmup

    def __call__(self, B: int, q: int) -> list[float]:
        import torch

        ids = torch.randint(0, self.vocab, (B, q), device=self.device)
        with torch.inference_mode():
            if self.device.type != "cuda":
                for _ in range(self.warmup):
                    self.model(ids)
                out = []
                for _ in range(self.repeats):
                    t0 = time.perf_counter()
                    self.model(ids)
                    out.append((time.perf_counter() - t0) * 1000.0)
                return out
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(max(1, self.warmup)):
                    self.model(ids)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.model(ids)
            try:
                for _ in range(self.warmup):
                    graph.replay()
                out = []
                for _ in range(self.repeats):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    graph.replay()
                    b.record()
                    b.synchronize()
                    out.append(a.elapsed_time(b))
                return out
            finally:
                del graph
                torch.cuda.empty_cache()


def sweep(timer, batches: list[int], qs: list[int], log_path: Path, budget_s: float, min_samples: int,
          min_unique: int, progress=None, done: set | None = None) -> dict:
    """Measure the grid; append each point to ``log_path`` as it is measured; never lose a point."""
    import torch

    done = done or set()
    skipped: list[str] = []
    t0 = time.perf_counter()
    n_points = len(done)
    tokens = {b * q for b, q in done}
    stopped_early = False
    with open(log_path, "a") as log:
        for b in batches:
            oom_q = None
            for q in qs:
                if (b, q) in done:
                    continue
                if oom_q is not None and q >= oom_q:
                    skipped.append(f"B={b} q={q}: skipped after out-of-memory at q={oom_q}")
                    continue
                try:
                    times = timer(b, q)
                except torch.cuda.OutOfMemoryError:
                    oom_q = q
                    skipped.append(f"B={b} q={q}: out of GPU memory")
                    torch.cuda.empty_cache()
                    continue
                log.write(json.dumps({"B": b, "q": q, "N": b * q, "ms": times}) + "\n")
                log.flush()
                done.add((b, q))
                n_points += 1
                tokens.add(b * q)
                if progress:
                    progress(b, q, float(np.median(times)))
            elapsed = time.perf_counter() - t0
            if elapsed > budget_s and n_points >= min_samples and len(tokens) >= min_unique:
                stopped_early = b != batches[-1]
                break
    return {"skipped": skipped, "seconds": round(time.perf_counter() - t0, 2), "stopped_early": stopped_early}


def read_log(log_path: Path) -> tuple[list[tuple[int, int, float]], set]:
    samples, done = [], set()
    if not log_path.exists():
        return samples, done
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
            b, q = int(rec["B"]), int(rec["q"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
        done.add((b, q))
        samples.extend((b, b * q, float(t)) for t in rec["ms"])
    return samples, done


def holdout_mape(samples: list, every: int = 5, jump_threshold: float = 0.15) -> float | None:
    """Fit on all points but every ``every``-th measured point; MAPE (%) on the held-back medians."""
    arr = np.asarray(samples, dtype=np.float64)
    keys = sorted({(int(b), int(n)) for b, n, _ in arr})
    held = set(keys[2::every])
    # never hold back a batch size's first/last point: that would test extrapolation, not the table
    by_b: dict[int, list[int]] = {}
    for b, n in keys:
        by_b.setdefault(b, []).append(n)
    held = {(b, n) for b, n in held if n not in (min(by_b[b]), max(by_b[b]))}
    if not held:
        return None
    train = np.array([s for s in arr if (int(s[0]), int(s[1])) not in held])
    test = np.array([s for s in arr if (int(s[0]), int(s[1])) in held])
    model = LatencyModel.fit(train[:, 0], train[:, 1], train[:, 2], jump_threshold=jump_threshold)
    errs = []
    for b, n in held:
        sel = (test[:, 0] == b) & (test[:, 1] == n)
        med = float(np.median(test[sel, 2]))
        errs.append(abs(model.predict(b, n) - med) / med)
    return float(np.mean(errs) * 100.0)


def profile_command(args) -> int:
    try:
        import torch
    except ImportError:
        raise UsageError("tiles profile needs PyTorch") from None
    from . import decoder

    cfg = load_config(args.hf_config)
    try:
        shape = decoder.DecoderShape.from_config(cfg, layers=args.layers, tp=args.tp)
        batches = decoder.coarse_to_fine(decoder.parse_batch_sizes(args.batch_sizes))
    except (decoder.UnsupportedArchitecture, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("no GPU: tiles profile times CUDA graphs on a GPU (use --device cpu only to try it out)")
    dtype_name = DTYPES.get(args.dtype)
    if dtype_name is None:
        raise UsageError(f"--dtype {args.dtype!r}: choose from {', '.join(sorted(DTYPES))}")
    if args.k < 1:
        raise UsageError("--k must be >= 1")
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    model_name = args.model_name or shape.name
    if args.layers:
        model_name = f"{model_name}-{args.layers}L"
    key = CacheKey(model=model_name, gpu=gpu, tp=args.tp, dtype=dtype_name, engine="offline-torch",
                   engine_version=torch.__version__.split("+")[0])
    cache = ProfileCache(args.out)
    if not args.force:
        existing = cache.load(key)
        if existing is not None:
            print(f"already profiled, skipping: {existing.directory} (use --force to profile again)")
            return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    log_path = Path(args.out) / f"{key.dirname}.partial.jsonl"
    samples, done = read_log(log_path) if args.resume else ([], set())
    if not args.resume and log_path.exists():
        log_path.unlink()
    qs = list(range(1, args.k + 2))
    print(f"profiling {decoder.describe(shape)} on {gpu}, {dtype_name}, TP={args.tp}, context {args.context_len}: "
          f"batch sizes {batches[0]}..{batches[-1]} ({len(batches)}) x q 1..{args.k + 1}", flush=True)
    model = decoder.build(shape, device, getattr(torch, dtype_name), max(batches), max(qs), args.context_len)
    timer = _Timer(model, shape.vocab, device, args.repeats, args.warmup)
    total = len(batches) * len(qs)
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=len(done), unit="pt", desc="verify grid")

        def progress(b, q, ms):
            bar.set_postfix_str(f"B={b} q={q} {ms:.2f} ms")
            bar.update(1)
    except ImportError:
        bar = None

        def progress(b, q, ms):
            print(f"  B={b} q={q}: {ms:.3f} ms", flush=True)

    res = sweep(timer, batches, qs, log_path, args.budget_s, args.min_samples, args.min_unique_counts, progress,
                done)
    if bar is not None:
        bar.close()
    samples, done = read_log(log_path)
    if len(done) < 2 or len({b * q for b, q in done}) < 2:
        raise UsageError(f"too few points measured ({len(done)}); points kept in {log_path}; "
                         + "; ".join(res["skipped"][:3]))
    held = holdout_mape(samples, jump_threshold=args.jump_threshold)
    latency = LatencyModel.from_samples(samples, jump_threshold=args.jump_threshold)
    desc = latency.describe()
    meta = {"grid": {"batch_sizes": sorted({b for b, _ in done}), "qs": qs, "context_len": args.context_len,
                     "repeats": args.repeats, "points": len(done), "grid_points": total,
                     "stopped_early": res["stopped_early"], "skipped": res["skipped"]},
            "profile": {"seconds": res["seconds"], "device": gpu, "shape": decoder.describe(shape),
                        "architecture": shape.architecture, "layers": shape.layers, "timing": (
                            "CUDA graph replay, CUDA events, median of repeats" if device.type == "cuda"
                            else "host clock (CPU)"), "holdout_mape": held,
                        "flops_per_token": decoder.flops_per_token(shape, args.context_len)}}
    saved = cache.save(key, latency, extra_meta=meta)
    if saved is None:
        raise UsageError(f"could not write the cache under {args.out}")
    log_path.unlink(missing_ok=True)
    print(f"profiled {len(done)} points in {res['seconds']:.0f} s; boundaries {desc['boundaries']}; "
          f"MAPE {desc['mape']:.2f}% on the measured points, {held if held is None else round(held, 2)}% "
          f"on held-back points; wrote {saved}")
    print(json.dumps({"dir": str(saved), "points": len(done), "boundaries": desc["boundaries"],
                      "mape": desc["mape"], "holdout_mape": held, "skipped": len(res["skipped"])}))
    return 0


def calibrate_command(args) -> int:
    """Calibration from a log of outcomes, or from a running tilespec server's own persisted calibration."""
    from specdec_engine.plots import plot_calibration
    from specdec_engine.policy import Calibration

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_log:
        cal = Calibration(n_bins=args.bins, n_positions=args.positions)
        scores, acc, pos = [], [], []
        for i, line in enumerate(Path(args.from_log).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                s, a = float(rec["score"]), int(bool(rec["accepted"]))
                p = int(rec.get("position", 0))
            except (ValueError, KeyError, TypeError) as err:
                raise UsageError(f"{args.from_log}:{i}: need JSON with 'score' and 'accepted' ({err})") from None
            if not 0 <= s <= 1 or math.isnan(s):
                raise UsageError(f"{args.from_log}:{i}: score must be in [0, 1], got {s}")
            scores.append(s)
            acc.append(a)
            pos.append(p)
        if not scores:
            raise UsageError(f"{args.from_log}: no outcomes")
        cal.update(scores, acc, pos)
        source = {"log": str(Path(args.from_log).resolve()), "pairs": len(scores)}
    else:
        if not (args.endpoint and args.cache_dir):
            raise UsageError("give --from-log FILE, or --endpoint URL --cache-dir DIR (the server's cache_dir)")
        cal, source = _calibrate_from_server(args)
    cal.save(out / "calibration.npz")
    plot_calibration(cal, out / "calibration.png")
    summ = cal.summary()
    (out / "calibration.json").write_text(json.dumps({"source": source, **summ}, indent=2) + "\n")
    print(f"calibration from {summ['n_pairs']} pairs: ECE {summ['ece']} (raw confidence {summ['ece_raw']}, "
          f"prequential {summ['ece_prequential']}); wrote {out / 'calibration.npz'} and {out / 'calibration.png'}")
    print(json.dumps(summ))
    return 0


def _calibrate_from_server(args):
    """Drive ``--prompts`` through the server, then read the calibration it persisted to its cache."""
    import asyncio

    from specdec_engine.policy import Calibration

    from .loadgen import run_load

    prompts = [ln for ln in Path(args.prompts).read_text().splitlines() if ln.strip()] if args.prompts else []
    prompts = [json.loads(p)["prompt"] if p.lstrip().startswith("{") else p for p in prompts]
    if prompts:
        recs, _ = asyncio.run(run_load(args.endpoint, args.model, prompts, concurrency=args.concurrency,
                                       max_tokens=args.max_tokens, temperature=0.0))
        bad = sum(not r.ok for r in recs)
        if bad == len(recs):
            raise UsageError(f"--endpoint {args.endpoint}: every request failed ({recs[0].error})")
        time.sleep(args.settle_s)
    root = Path(args.cache_dir)
    cands = sorted(root.glob("*/calibration.npz"), key=lambda p: p.stat().st_mtime)
    if not cands:
        raise UsageError(f"--cache-dir {root}: no calibration.npz yet (is it the server's cache_dir? the server "
                         "writes it every calibration_save_interval_s)")
    cal = Calibration.load(cands[-1])
    return cal, {"server": args.endpoint, "cache": str(cands[-1]), "prompts": len(prompts)}


def show_command(args) -> int:
    d = Path(args.dir)
    if not (d / "meta.json").is_file():
        raise UsageError(f"{d}: not a profile cache (no meta.json)")
    meta = json.loads((d / "meta.json").read_text())
    problems = ProfileCache(d.parent).validate_dir(d)
    lat = LatencyModel.load(d / "latency_model.npz") if (d / "latency_model.npz").exists() else None
    print(f"{d.name}")
    print(f"  key: {json.dumps(meta.get('key', {}))}")
    if problems:
        print(f"  INVALID: {'; '.join(problems)}")
    if lat is not None:
        desc = lat.describe()
        print(f"  latency: {desc['n_points']} points, batch sizes {desc['batch_sizes']}, tokens "
              f"{desc['token_range'][0]}..{desc['token_range'][1]}")
        print(f"  fit: MAPE {desc['mape']:.2f}% on measured points, segments {desc['segment_mape']:.2f}%, held-back "
              f"{(meta.get('profile') or {}).get('holdout_mape')}%")
        print(f"  tile boundaries (tokens): {desc['boundaries']}")
        for seg in desc["segments"]:
            print(f"    from N={seg['start']:>6}: {seg['intercept_ms']:.4f} ms + "
                  f"{seg['slope_ms_per_token'] * 1000:.3f} us/token")
    cal = meta.get("calibration")
    if cal:
        print(f"  calibration: {cal.get('n_pairs')} pairs, ECE {cal.get('ece')} (raw {cal.get('ece_raw')}, "
              f"prequential {cal.get('ece_prequential')})")
    return 1 if problems else 0


def add_parsers(tsub) -> None:
    p = tsub.add_parser("profile", help="time verify forwards of a model shape (random weights) on a GPU")
    p.add_argument("--hf-config", required=True, help="config.json (file, folder or inline JSON)")
    p.add_argument("--model-name", help="name in the cache key (default: the config's _name_or_path)")
    p.add_argument("--layers", type=int, help="profile only this many decoder layers")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: heads and FFN are split by it")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--context-len", type=int, default=512, help="KV prefix length per sequence")
    p.add_argument("--batch-sizes", default="1-128", help="e.g. 1-128, 1,2,4,8-16, 1-256:8")
    p.add_argument("--k", type=int, default=8, help="largest draft length: q = 1..K+1")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-samples", type=int, default=70)
    p.add_argument("--min-unique-counts", type=int, default=6)
    p.add_argument("--budget-s", type=float, default=1800.0)
    p.add_argument("--jump-threshold", type=float, default=0.15)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--resume", action="store_true", help="continue from <out>/<key>.partial.jsonl")
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", default="cache")
    p.set_defaults(func=profile_command)

    c = tsub.add_parser("calibrate", help="confidence calibration from a running tilespec server or a log")
    c.add_argument("--endpoint", help="OpenAI-compatible base URL of a tilespec server")
    c.add_argument("--model", default="tiny")
    c.add_argument("--prompts", help="prompts file (one per line, or JSONL with 'prompt')")
    c.add_argument("--cache-dir", help="the server's cache_dir (where it persists its calibration)")
    c.add_argument("--concurrency", type=int, default=4)
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--settle-s", type=float, default=3.0)
    c.add_argument("--from-log", help="JSONL of outcomes: {'score', 'accepted'[, 'position']}")
    c.add_argument("--bins", type=int, default=20)
    c.add_argument("--positions", type=int, default=1)
    c.add_argument("--out", required=True)
    c.set_defaults(func=calibrate_command)

    s = tsub.add_parser("show", help="print a cache's model: boundaries, slopes, fit and calibration error")
    s.add_argument("dir")
    s.set_defaults(func=show_command)
