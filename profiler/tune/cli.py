"""The ``specdec tune`` subcommand."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from . import space as sp
from .engine import STRATEGIES, Tuner, dry_run_text
from .ledger import Ledger
from .runner import RUNNERS, LocalEagle3Runner, SyntheticRunner


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search draft-training hyperparameters (hyperband/grid/random/tpe) by "
                                    "measured acceptance length",
                       description="Search global batch, learning rate, accumulation and warmup for the draft: "
                                   "rung reads on the training proxy (simulated_acc_len at matched samples), the "
                                   "best promoted to serving, the champion decided on measured acceptance length "
                                   "only. Resumable from --ledger.")
    p.add_argument("--space", required=True, help="search space JSON (see examples/tune-space.eagle3.json)")
    p.add_argument("--strategy", choices=STRATEGIES, default="hyperband")
    p.add_argument("--ledger", help="append-only JSONL ledger (required unless --dry-run); rerun to resume")
    p.add_argument("--seed-from", help="prior config or tune result JSON: its config becomes the baseline")
    p.add_argument("--dry-run", action="store_true", help="print the plan and launcher mapping; spend nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-trials", type=int, help="random/tpe: trials (default: the space's n_trials)")
    p.add_argument("--gpus", type=int, help="override hardware.gpus of the space (the launcher's GPU count)")
    p.add_argument("--runner", choices=sorted(RUNNERS), default="local-eagle3",
                   help="trial runner: local-eagle3 (the local trainer + a vLLM measurement), or synthetic "
                        "(a deterministic function of the config: tests the search only, trains nothing)")
    p.add_argument("--workdir", help="trial directories (default: beside the ledger, <ledger>.trials/)")
    p.add_argument("--out", help="result JSON (default: <ledger>.result.json)")
    p.add_argument("--target", help="local-eagle3: target model folder")
    p.add_argument("--corpus", help="local-eagle3: corpus JSONL")
    p.add_argument("--local-arg", action="append", default=[],
                   help="local-eagle3: extra `specdec train --backend local` argument (repeat; e.g. "
                        "--local-arg=--seq-len --local-arg=32)")
    p.add_argument("--num-speculative-tokens", type=int, default=3,
                   help="local-eagle3: K when serving the export for the measurement (3)")
    p.add_argument("--synthetic-delay", type=float, default=0.0,
                   help="synthetic: seconds per 1000 samples (to test kill-and-resume)")
    p.set_defaults(func=tune_command)


def load_seed_from(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"--seed-from {path}: {err}") from None
    if isinstance(raw, dict) and isinstance(raw.get("champion"), dict):
        raw = raw["champion"].get("config", {})
    elif isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        raw = raw["config"]
    if not isinstance(raw, dict):
        raise UsageError(f"--seed-from {path}: expected a config object, a {{'config': ...}} or a tune result")
    bad = [k for k in raw if k not in sp.PARAM_ORDER and k not in ("per_device_batch", "gpus", "total_samples")]
    if bad:
        raise UsageError(f"--seed-from {path}: {bad[0]}: unknown key (one of {', '.join(sp.PARAM_ORDER)})")
    return {k: v for k, v in raw.items() if k in sp.PARAM_ORDER}


def tune_command(args) -> int:
    space = sp.load_space(args.space)
    if args.gpus:
        space.hardware.gpus = args.gpus
    seed_from = load_seed_from(args.seed_from)
    if args.dry_run:
        print(dry_run_text(space, args.strategy, args.seed, seed_from, args.n_trials), end="")
        return 0
    if not args.ledger:
        raise UsageError("--ledger PATH is required (the tune's durable record; rerun with it to resume)")
    ledger_path = Path(args.ledger)
    workdir = Path(args.workdir) if args.workdir else ledger_path.with_name(ledger_path.name + ".trials")
    if args.runner == "synthetic":
        runner = SyntheticRunner(args.synthetic_delay, workdir / "calls.jsonl")
        print("specdec tune: runner 'synthetic' - a deterministic function of the config; it tests the search "
              "and trains/measures nothing real")
    else:
        runner = LocalEagle3Runner(args.target, args.corpus, extra_args=args.local_arg,
                                   num_speculative_tokens=args.num_speculative_tokens)
    try:
        ledger = Ledger(ledger_path)
    except ValueError as err:
        raise UsageError(str(err)) from None
    tuner = Tuner(space, args.strategy, runner, ledger, workdir, args.seed, seed_from, args.n_trials)
    try:
        result = tuner.run()
    finally:
        ledger.close()
    out = Path(args.out) if args.out else ledger_path.with_name(ledger_path.name + ".result.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    c = result["champion"]
    print(f"verdict: {result['verdict']} (noise {result['noise']}); champion {c['trial']} acceptance length "
          f"{c['objective']:.4f} vs baseline {result['baseline']['objective']:.4f}; config {c['config']}; "
          f"launcher {c['launcher']['per_device_batch']} per device x {c['launcher']['gpus']} GPU(s) x "
          f"{c['launcher']['accumulation']} accumulation")
    print(f"ledger {ledger_path}; result {out}")
    return 0
