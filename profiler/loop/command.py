"""``specdec loop`` argument parsing and the oneshot / controller entry. Exit codes: 0 GO (or the controller
stopped cleanly), 1 NO-GO, 3 a red gate, 2 bad input."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path

from ..errors import UsageError
from . import promote
from .drift import DEFAULT_THRESHOLD
from .phases import Interrupted, LoopOptions, Pipeline, RedGate
from .state import ServiceState, StateLock, load, parse_config, save


def _log(msg: str) -> None:
    print(f"specdec loop: {msg}", file=sys.stderr, flush=True)


def _options(args) -> LoopOptions:
    if args.start_phase is not None and not 0 <= args.start_phase <= 5:
        raise UsageError(f"--start-phase {args.start_phase}: phases are 0..5")
    if not 0 <= args.until_phase <= 5:
        raise UsageError(f"--until-phase {args.until_phase}: phases are 0..5")
    for flag in ("ab_trials", "ab_requests", "ab_concurrency", "ab_max_tokens"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.mode == "controller" and not args.profile:
        raise UsageError("--mode controller needs --profile ACCESS_LOG (the log it re-profiles as it grows)")
    if args.profile and args.aa_shapes:
        raise UsageError("--profile and --aa-shapes: choose one")
    workdir = Path(args.workdir)
    return LoopOptions(
        target=str(Path(args.target).resolve()) if Path(args.target).exists() else args.target, served=args.served,
        standing_config=parse_config(args.standing_config), method=args.method, workdir=workdir,
        state_path=Path(args.state) if args.state else workdir / "service-state.json", profile=args.profile,
        aa_shapes=args.aa_shapes, candidate_url=args.candidate_url, served_model_name=args.served_model_name,
        draft=args.draft, k=args.k, start_phase=args.start_phase, until_phase=args.until_phase,
        train_args=shlex.split(args.train_args or ""), ab_trials=args.ab_trials, ab_requests=args.ab_requests,
        ab_concurrency=args.ab_concurrency, ab_max_tokens=args.ab_max_tokens, ab_max_model_len=args.ab_max_model_len,
        ab_burn_in=args.ab_burn_in, min_requests=args.min_requests, min_corpus_rows=args.min_corpus_rows,
        min_gain=args.min_gain, seed=args.seed)


def _state(opts: LoopOptions, fresh: bool) -> ServiceState:
    st = load(opts.state_path)
    if st is None:
        st = ServiceState(target=opts.target, served_deploy=opts.served, standing_config=opts.standing_config)
        st.event("created", standing_config=opts.standing_config)
        return st
    if st.target != opts.target:
        raise UsageError(f"{opts.state_path} belongs to target {st.target}, not {opts.target}; use another --state")
    if st.standing_config != opts.standing_config:
        _log(f"{opts.state_path}: the standing config on record is {st.standing_config} (promoted by an earlier "
             f"experiment); it is what the A/B measures, not --standing-config")
        opts.standing_config = st.standing_config
    if fresh and st.current is not None and not st.current.finished:
        st.event("abandoned", experiment_id=st.current.experiment_id)
        st.current.finished = True
    return st


def loop_command(args) -> int:
    opts = _options(args)
    stop = threading.Event()

    def on_term(signum, frame):
        _log(f"{signal.Signals(signum).name}: stopping after the running command")
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with StateLock(opts.state_path):
        state = _state(opts, args.fresh)
        save(opts.state_path, state)
        if args.mode == "controller":
            from . import controller

            return controller.run(opts, state, stop, interval_s=args.interval_s, threshold=args.drift_threshold,
                                  max_cycles=args.max_cycles, metrics_port=args.metrics_port, log=_log)
        try:
            outcome = Pipeline(opts, state, stop, _log).run("oneshot")
        except RedGate as red:
            _log(f"red gate: {red}")
            print(f"RED GATE: {red}")
            return 3
        except Interrupted as why:
            _log(f"{why}; state kept at the last finished phase ({opts.state_path})")
            return 0
        if outcome in ("GO", "NO-GO") and state.last_ab_verdict:
            print(state.last_ab_verdict["summary"])  # starts with GO / NO-GO
        else:
            print(outcome)
        if state.current and "5" in state.current.phases:
            print(f"report: {state.current.phases['5'].outputs['report']['markdown']}")
        return {"GO": 0, "NO-GO": 1}.get(outcome, 0)


def add_parser(sub) -> None:
    p = sub.add_parser("loop", help="profile -> corpus -> train -> A/B -> promote only on a measured win",
                       description=(__import__("specdec_profiler.loop", fromlist=["x"]).__doc__ or "").split("\n\n")[0])
    p.add_argument("--target", required=True, help="the target model folder")
    p.add_argument("--served", default="local", help="'local' (the loop starts vllm serve per arm) or the URL of the "
                                                    "standing deployment")
    p.add_argument("--candidate-url", help="with --served URL: where the candidate is served")
    p.add_argument("--served-model-name", help="model name in requests (default: the target folder's name)")
    p.add_argument("--standing-config", default="none",
                   help="the --speculative-config served now: JSON, a JSON file, or 'none' (default)")
    p.add_argument("--profile", help="access log (JSONL[.gz]) of the served traffic")
    p.add_argument("--aa-shapes", action="store_true", help="no log: the Artificial Analysis shapes")
    p.add_argument("--method", required=True, choices=promote.METHODS)
    p.add_argument("--draft", help="an already trained draft (skips phases 2-3)")
    p.add_argument("-k", type=int, help="draft length of a fixed-K candidate (default per method)")
    p.add_argument("--mode", choices=["oneshot", "controller"], default="oneshot")
    p.add_argument("--state", help="service-state.json (default <workdir>/service-state.json)")
    p.add_argument("--workdir", default="runs/loop", help="evidence folders, one per experiment id")
    p.add_argument("--start-phase", type=int, help="re-run from phase N (0-5), keeping the phases before it")
    p.add_argument("--until-phase", type=int, default=5, help="stop after phase N (default 5)")
    p.add_argument("--fresh", action="store_true", help="abandon an unfinished experiment instead of resuming it")
    p.add_argument("--train-args", help="extra arguments for `specdec train` (quoted), e.g. '--steps 200'")
    p.add_argument("--ab-trials", type=int, default=3, help="trials per arm (decide needs 3)")
    p.add_argument("--ab-requests", type=int, default=12, help="measured requests per trial")
    p.add_argument("--ab-concurrency", type=int, default=4)
    p.add_argument("--ab-max-tokens", type=int, default=64, help="forced output tokens (at most the traffic's p50)")
    p.add_argument("--ab-max-model-len", type=int, default=2048)
    p.add_argument("--ab-burn-in", type=int, default=2, help="requests per arm run first and discarded")
    p.add_argument("--min-requests", type=int, default=20, help="profile gate: requests needed")
    p.add_argument("--min-corpus-rows", type=int, default=20, help="corpus gate: rows needed")
    p.add_argument("--min-gain", type=float, default=0.0, help="decide: relative gain required beyond the noise")
    p.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("controller")
    c.add_argument("--interval-s", type=float, default=3600.0, help="seconds between cycles")
    c.add_argument("--drift-threshold", type=float, default=DEFAULT_THRESHOLD)
    c.add_argument("--max-cycles", type=int, help="stop after N cycles (default: run until SIGTERM)")
    c.add_argument("--metrics-port", type=int, help="serve the controller's Prometheus metrics on 127.0.0.1:PORT")
    p.set_defaults(func=loop_command)
