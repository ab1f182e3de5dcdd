"""``specdec train``: train a draft head on a corpus (the training handoff).

Backends:

- ``local``: the built-in EAGLE-3 trainer (``specdec_profiler.eagle3``; EAGLE-1 with ``--method eagle``),
  good for tiny and small Llama targets on a CPU: capture probe, training-time
  test unroll, acc_i / simulated acceptance length, checkpoints (a rerun into
  the same ``--out`` resumes), the non-degenerate-training gate, export in the
  format vLLM loads as ``{"method": "eagle3", "model": OUT}``.

Other backends (SpecForge renderings for local/Slurm/Kubernetes launchers)
plug into the same dispatch in ``run``.
"""

from __future__ import annotations

import sys

from .errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a draft head on a corpus (local EAGLE-3 / EAGLE-1 trainer)",
                       description="Train a draft head for TARGET on a SpecForge corpus JSONL "
                                   "({\"id\", \"conversations\": [{\"role\",\"content\"}]}). The local backend "
                                   "probes the hidden-state capture, trains, gates on non-degenerate training "
                                   "and exports a vLLM-loadable EAGLE-3 (or, with --method eagle, EAGLE-1) head "
                                   "to --out.")
    p.add_argument("--backend", choices=["local", "specforge"], default="local",
                   help="who trains: local, or specforge (renders SpecForge runs; default: local)")
    p.add_argument("--method", choices=["eagle3", "eagle"], default="eagle3",
                   help="draft method: eagle3, or eagle (an EAGLE-1 head over the target's output hidden state and "
                        "whole vocabulary; local backend only) (default: eagle3)")
    p.add_argument("--corpus", required=True, help="SpecForge-format corpus JSONL")
    p.add_argument("--target", required=True, help="target model folder (a Llama checkpoint)")
    p.add_argument("--out", required=True, help="output folder: the exported head, training_log.json, checkpoints/")
    p.add_argument("--steps", type=int, default=240, help="optimizer steps (default: 240)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--batch", type=int, default=16, help="rows per step (default: 16)")
    p.add_argument("--warmup", type=int, default=15, help="linear warmup steps (default: 15)")
    p.add_argument("--ttt", type=int, default=3, help="training-time-test unroll length (default: 3)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per training row (default: 64)")
    p.add_argument("--draft-vocab", type=int, default=1024,
                   help="draft vocabulary size (most frequent corpus tokens; default: 1024)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint period in steps (default: 50)")
    p.add_argument("--eval-rows", type=int, default=32, help="held-out rows for the final evaluation (default: 32)")
    p.add_argument("--regenerate", action="store_true",
                   help="let the target rewrite each row after a prompt prefix (SpecForge's regenerate step)")
    p.add_argument("--no-gate", action="store_true", help="export even if the training gate fails (not advised)")
    p.add_argument("--seed", type=int, default=1234)
    from .specforge import add_arguments as _specforge_arguments

    _specforge_arguments(p)
    p.set_defaults(func=run)


def _check(args) -> None:
    for name in ("steps", "batch", "ttt", "seq_len", "draft_vocab", "eval_rows"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if args.checkpoint_every < 0:
        raise UsageError("--checkpoint-every must be >= 0")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0 (got {args.lr})")
    if args.ttt >= args.seq_len:
        raise UsageError(f"--ttt ({args.ttt}) must be smaller than --seq-len ({args.seq_len})")


def run(args) -> int:
    if args.method != "eagle3" and args.backend != "local":
        raise UsageError(f"--method {args.method}: the {args.backend} backend renders EAGLE-3 runs only; "
                         f"train {args.method} heads with --backend local")
    if args.backend == "specforge":
        from .specforge import command as specforge_command

        return specforge_command(args)
    _check(args)
    if args.backend == "local":
        from .eagle3.local import run_local

        return run_local(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    raise UsageError(f"--backend {args.backend}: not supported")  # pragma: no cover (argparse choices)
