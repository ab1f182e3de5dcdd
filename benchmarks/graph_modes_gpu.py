#!/usr/bin/env python3
"""Uniform vs ragged K on a GPU: one verify step as a FULL CUDA graph, as PIECEWISE graphs, and eagerly.

    PYTHONPATH=.:/tmp/specdec_pp python3 benchmarks/graph_modes_gpu.py --config benchmarks/configs/llama-3.1-8b.json \
        --k 4 --batch-sizes 1,4,16,64 --out $OUT

Why: vLLM replays a FULL CUDA graph only for a *uniform* decode batch (every request verifying K_max drafts,
``uniform_decode_query_len`` = 1 + K_max); a batch with different K per request, or K=0 for every request, runs
PIECEWISE: graphs between the attention calls, attention launched eagerly (``cudagraph_dispatcher.py``, vLLM
0.32.0). What that costs decides whether the selector should pay for a uniform plan
(``KSelector.set_uniform_steps``). There is no GPU vLLM here, so this times the same split on the project's
random-weight decoder (``specdec_profiler.decoder``: the model's real shapes, SDPA attention over a KV prefix of
``--context-len`` tokens, bf16):

- full: embedding, every layer and the LM head in one graph;
- piecewise: one graph per stretch between attention calls (layer i's o-proj + MLP + layer i+1's norm, QKV,
  RoPE and KV write), attention launched eagerly between replays, as vLLM's PIECEWISE mode splits it;
- eager: the same code, no graphs.

Each of the three runs exactly the same kernels in the same order (including the copies into the static buffers
the graphs need), so the differences are launch and scheduling costs alone. CUDA events around whole steps,
median of ``--repeats`` after warm-up. Prints a table; writes graph_modes.json and graph_modes.png to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def pieces(model, shape, B: int, q: int):
    """(segments, attention, logits): callables over static buffers (segments[i] runs between attention i-1 and
    i) and the buffer the last segment writes the logits to."""
    import torch
    import torch.nn.functional as F

    dev, dt = model.embed.device, model.embed.dtype
    d, H, KV = shape.head_dim, shape.heads, shape.kv_heads
    ids = torch.randint(0, shape.vocab, (B, q), device=dev)
    x = torch.empty(B, q, shape.hidden, device=dev, dtype=dt)
    qf = torch.empty(B, KV, (H // KV) * q, d, device=dev, dtype=dt)
    a = torch.empty_like(qf)
    logits = torch.empty(B, q, shape.vocab, device=dev, dtype=dt)
    layers = model.layers

    def pre(L):
        qf.copy_(model.attention_input(L, x, B, q))

    def post(L):
        x.copy_(model.layer_output(L, x, a, B, q))

    def first():
        x.copy_(F.embedding(ids, model.embed))
        pre(layers[0])

    def middle(i):
        def run():
            post(layers[i - 1])
            pre(layers[i])
        return run

    def last():
        post(layers[-1])
        logits.copy_(F.linear(model.rms(x, model.norm), model.head))

    def attention():
        a.copy_(model.attend(qf, B, q))

    segments = [first] + [middle(i) for i in range(1, len(layers))] + [last]
    return segments, attention, logits


def step_fn(mode: str, segments, attention):
    """One verify step in ``mode``; graphs are captured here (after a warm-up on a side stream)."""
    import torch

    def eager():
        for i, seg in enumerate(segments):
            seg()
            if i < len(segments) - 1:
                attention()

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            eager()
    torch.cuda.current_stream().wait_stream(s)
    if mode == "eager":
        return eager, []
    pool = torch.cuda.graph_pool_handle()
    if mode == "full":
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            eager()
        return g.replay, [g]
    graphs = []
    for seg in segments:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            seg()
        graphs.append(g)

    def piecewise():
        for i, g in enumerate(graphs):
            g.replay()
            if i < len(graphs) - 1:
                attention()
    return piecewise, graphs


def time_step(run, repeats: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def check_same_output(segments, attention, logits) -> float:
    """max |full - piecewise| logits relative to their scale: the three modes must compute the same step."""
    import torch

    outs = {}
    for mode in ("eager", "full", "piecewise"):
        run, graphs = step_fn(mode, segments, attention)
        run()
        torch.cuda.synchronize()
        outs[mode] = logits.float().clone()
        del graphs
    ref = outs["eager"]
    scale = ref.abs().max().item() or 1.0
    return max((outs[m] - ref).abs().max().item() / scale for m in ("full", "piecewise"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="HF config.json of the model shape")
    p.add_argument("--k", type=int, default=4, help="K_max: the uniform step verifies 1 + K tokens per request")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--context-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/graph_modes")
    args = p.parse_args(argv)
    import torch

    from specdec_profiler import decoder

    if not torch.cuda.is_available():
        print("graph_modes_gpu: needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = json.loads(Path(args.config).read_text())
    shape = decoder.DecoderShape.from_config(cfg)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    qs = sorted({1, args.k + 1})
    dev = torch.device("cuda")
    model = decoder.build(shape, dev, torch.bfloat16, max(batches), max(qs), args.context_len)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.time()
    for B in batches:
        for q in qs:
            segments, attention, logits = pieces(model, shape, B, q)
            row = {"batch": B, "q": q, "tokens": B * q,
                   "max_rel_diff_vs_eager": check_same_output(segments, attention, logits)}
            for mode in ("full", "piecewise", "eager"):
                run, graphs = step_fn(mode, segments, attention)
                ms = time_step(run, args.repeats, args.warmup)
                row[mode + "_ms"] = round(statistics.median(ms), 4)
                row[mode + "_spread"] = [round(min(ms), 4), round(max(ms), 4)]
                del graphs
                torch.cuda.empty_cache()
            row["piecewise_over_full"] = round(row["piecewise_ms"] / row["full_ms"], 4)
            rows.append(row)
            print(f"B={B:<4} q={q:<2} full {row['full_ms']:.3f} ms  piecewise {row['piecewise_ms']:.3f} ms  "
                  f"eager {row['eager_ms']:.3f} ms  piecewise/full {row['piecewise_over_full']:.3f}", flush=True)
    ctx = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": shape.name,
           "layers": shape.layers, "hidden": shape.hidden, "dtype": "bfloat16", "context_len": args.context_len,
           "k_max": args.k, "repeats": args.repeats, "seconds": round(time.time() - t0, 1),
           "timing": "CUDA events around whole steps, median"}
    (out_dir / "graph_modes.json").write_text(json.dumps({"context": ctx, "rows": rows}, indent=1) + "\n")
    print(f"\n{shape.name} on {ctx['gpu']}, bf16, context {args.context_len}, K_max {args.k}: ms per verify step")
    print(f"{'B':>4} {'q':>3} {'full':>9} {'piecewise':>10} {'eager':>9} {'pw/full':>8}")
    for r in rows:
        print(f"{r['batch']:>4} {r['q']:>3} {r['full_ms']:>9.3f} {r['piecewise_ms']:>10.3f} {r['eager_ms']:>9.3f} "
              f"{r['piecewise_over_full']:>8.3f}")
    try:
        plot(rows, ctx, out_dir / "graph_modes.png")
    except ImportError:
        print("no matplotlib: run with --replot later")
    return 0


def plot(rows, ctx, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for q, style in zip(sorted({r["q"] for r in rows}), ("o-", "s--")):
        rs = [r for r in rows if r["q"] == q]
        ax.plot([r["batch"] for r in rs], [r["piecewise_over_full"] for r in rs], style,
                label=f"q={q} tokens per request")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (requests)")
    ax.set_ylabel("PIECEWISE / FULL step time")
    ax.set_title(f"{ctx['model']} ({ctx['layers']} layers) on {ctx['gpu']}, ctx {ctx['context_len']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
