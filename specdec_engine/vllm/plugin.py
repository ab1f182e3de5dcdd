"""The ``vllm.general_plugins`` entry point: makes ``{"method": "tilespec", ...}`` a speculative method.

vLLM calls :func:`register` in every process it starts (API server, engine
core, workers), before configs are built. It must be cheap, idempotent and
harmless for engines that do not use tilespec, so it only installs two
wrappers (checked by :mod:`compat`):

- ``EngineArgs.create_speculative_config``: for ``method == "tilespec"``,
  validate our keys, hand the rest to vLLM with ``method = base``, put our
  config in ``additional_config["tilespec"]`` (the channel vLLM gives plugins
  to every process) and select :class:`TileSpecScheduler` as ``scheduler_cls``;
  any other method passes through untouched;
- ``Executor.compile_or_warm_up_model``: after vLLM's own warmup, profile (or
  load) the latency model, for tilespec engines only;
- ``GPUModelRunner._prepare_inputs`` / ``sample_tokens`` /
  ``propose_draft_token_ids`` (worker) and ``EngineCore.post_step``: the lean
  path of ``fast_path.py`` (drafts returned with the step's output instead of
  by a second RPC, every tilespec engine; for prompt lookup also no rejection
  sampler on steps without drafts and no search when no draft is wanted).

For ``base: "ngram"`` the rewrite also limits numba's thread pool to one
thread (``numba_threads.py``: vLLM's drafter uses one, the idle rest starve
the forward's OpenMP kernels on CPU).

On an unsupported vLLM it installs nothing and a tilespec config fails with a
message naming the version and what is missing.
"""

from __future__ import annotations

import logging

from . import compat

logger = logging.getLogger("specdec_engine.vllm")
SCHEDULER_CLS = "specdec_engine.vllm.scheduler.TileSpecScheduler"
_registered = False


class _ToVllmLogger(logging.Handler):
    """Hands our records to vLLM's logger, so they print with vLLM's handler, format and level."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("vllm").handle(record)


def _route_logs_through_vllm() -> None:
    """Our INFO lines ("TileSpec: already profiled, skipping", ...) must appear in vLLM's log.

    vLLM configures only its own "vllm" logger (lazily, with its own level),
    so records of "specdec_engine.*" would otherwise reach Python's last-resort
    handler, which drops INFO.
    """
    ours = logging.getLogger("specdec_engine")
    if any(isinstance(h, _ToVllmLogger) for h in ours.handlers):
        return
    ours.addHandler(_ToVllmLogger())
    ours.setLevel(logging.DEBUG)
    ours.propagate = False


def _speculative_fields() -> set[str]:
    from vllm.config.speculative import SpeculativeConfig

    return set(getattr(SpeculativeConfig, "__dataclass_fields__", {})) | set(
        getattr(SpeculativeConfig, "model_fields", {}))


V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"


def _choose_runner_and_scheduling(engine_args) -> None:
    """tilespec needs vLLM's V1 model runner and synchronous scheduling; choose them, or refuse by name.

    Why (read in vLLM 0.32.0's source; the CPU build runs V1 and synchronous scheduling anyway):
    - the V2 runner (vLLM's default on CUDA for EAGLE/EAGLE-3) keeps draft ids on the GPU and hands the
      scheduler ``-1`` placeholders, and drafts through its own speculators, not the proposer methods our
      confidence capture wraps: neither shadow acceptance nor per-token confidence would reach the policy
      (per-request trimming itself would work there);
    - with async scheduling the engine schedules step N+1 before step N's output and drafts arrive, and the
      scheduler sees only placeholders; vLLM does not turn it off for a custom ``scheduler_cls`` on CUDA.
    The trade-off: V1 is what vLLM calls deprecated and lacks some V2-only features (prefill context
    parallel, adaptive verification, V2's CUDA-graphed drafter); synchronous scheduling gives up overlapping
    the host's scheduling with the GPU step, which our one-RPC fast path partly recovers for prompt lookup.
    """
    import os

    from .config import TileSpecConfigError

    if os.environ.get(V2_RUNNER_ENV, "") not in ("", "0"):
        raise TileSpecConfigError(f"{V2_RUNNER_ENV}={os.environ[V2_RUNNER_ENV]} cannot be combined with method "
                                  "'tilespec': it needs vLLM's V1 model runner (unset it or set it to 0)")
    if getattr(engine_args, "async_scheduling", None):
        raise TileSpecConfigError("--async-scheduling cannot be combined with method 'tilespec': its scheduler "
                                  "needs each step's drafts before it schedules the next (leave it unset)")
    os.environ[V2_RUNNER_ENV] = "0"  # inherited by the engine-core and worker processes started after this
    engine_args.async_scheduling = False
    logger.info("TileSpec: vLLM's V1 model runner (%s=0) and synchronous scheduling: the policy needs each "
                "step's real drafts and accept counts before it schedules the next", V2_RUNNER_ENV)


def rewrite_engine_args(engine_args) -> None:
    """If ``engine_args.speculative_config`` asks for tilespec, rewrite it in place (see module doc)."""
    from .config import split_speculative_config
    from .runtime import ADDITIONAL_CONFIG_KEY

    spec = engine_args.speculative_config
    if isinstance(spec, str):
        import json

        spec = json.loads(spec)
    if not isinstance(spec, dict) or spec.get("method") != "tilespec":
        return
    compat.require()
    theirs, ours = split_speculative_config(spec, _speculative_fields())
    engine_args.speculative_config = theirs
    extra = dict(engine_args.additional_config or {})
    extra[ADDITIONAL_CONFIG_KEY] = ours.model_dump()
    engine_args.additional_config = extra
    current = engine_args.scheduler_cls
    if current not in (None, SCHEDULER_CLS) and getattr(current, "__name__", None) != "TileSpecScheduler":
        from .config import TileSpecConfigError

        raise TileSpecConfigError(f"--scheduler-cls {current!r} cannot be combined with method 'tilespec', "
                                  f"which needs its own scheduler ({SCHEDULER_CLS})")
    engine_args.scheduler_cls = SCHEDULER_CLS
    _choose_runner_and_scheduling(engine_args)
    if ours.base == "ngram":
        from .numba_threads import limit_numba_threads

        logger.info("TileSpec: prompt-lookup drafter on one numba thread (%s)", limit_numba_threads())
    logger.info("TileSpec: speculative method 'tilespec' over '%s' with K_max=%s", ours.base,
                theirs.get("num_speculative_tokens"))


def _wrap_create_speculative_config(original):
    def create_speculative_config(self, target_model_config, target_parallel_config, *args, **kwargs):
        rewrite_engine_args(self)
        return original(self, target_model_config, target_parallel_config, *args, **kwargs)

    return create_speculative_config


def register() -> None:
    """Entry point (``vllm.general_plugins``)."""
    global _registered
    if _registered:
        return
    _registered = True
    _route_logs_through_vllm()
    problems = compat.check({"create_speculative_config", "executor.compile_or_warm_up_model",
                             "scheduler_stats.specdec_stats"})
    if problems:
        # Do not break engines that never asked for tilespec; a tilespec config fails in rewrite_engine_args.
        logger.debug("TileSpec: not installing patches: %s", "; ".join(problems))
        try:
            compat.install_patch("create_speculative_config", _wrap_create_speculative_config)
        except Exception:  # noqa: BLE001
            pass
        return
    from . import fast_path, warmup

    if not compat.check({"rejection_sampler.expand_batch_to_tokens"}):
        # a vLLM bug on CPU, fixed for every speculative method (plain ngram too); GPU tensors are untouched
        compat.install_patch("rejection_sampler.expand_batch_to_tokens", compat.cpu_expand_fix)
    compat.install_patch("create_speculative_config", _wrap_create_speculative_config)
    compat.install_patch("executor.compile_or_warm_up_model", warmup.make_warmup_wrapper)
    if not compat.check({"proposer._greedy_sample", "proposer.propose", "runner.take_draft_token_ids.conf"}):
        from . import draft_confidence  # model drafters' per-token confidence; inert unless method is tilespec

        compat.install_patch("proposer._greedy_sample", draft_confidence.make_greedy_sample_wrapper)
        compat.install_patch("proposer.propose", draft_confidence.make_propose_wrapper)
        compat.install_patch("runner.take_draft_token_ids.conf", draft_confidence.make_take_draft_token_ids_wrapper)
    if not compat.check({"runner._prepare_inputs", "runner.sample_tokens", "runner.take_draft_token_ids",
                         "runner.propose_draft_token_ids", "engine_core.post_step"}):
        compat.install_patch("runner._prepare_inputs", fast_path.make_prepare_inputs_wrapper)
        compat.install_patch("runner.propose_draft_token_ids", fast_path.make_propose_wrapper)
        compat.install_patch("runner.sample_tokens", fast_path.make_sample_tokens_wrapper)
        compat.install_patch("engine_core.post_step", fast_path.make_post_step_wrapper)
    if not compat.check({"engine_core_proc._process_engine_step"}):
        from . import output_handoff

        compat.install_patch("engine_core_proc._process_engine_step", output_handoff.make_process_engine_step_wrapper)
    compat.extend_scheduler_stats()
    from .phase_timer import install_from_env

    install_from_env()  # SPECDEC_PHASE_TIMER=N: a diagnostic, after our own wrappers (see phase_timer.py)
