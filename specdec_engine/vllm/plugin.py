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
- ``GPUModelRunner._prepare_inputs`` / ``sample_tokens`` (worker) and
  ``EngineCore.post_step``: the lean path of ``fast_path.py`` (no rejection
  sampler on steps without drafts; drafts returned with the step's output
  instead of by a second RPC), tilespec engines with prompt lookup only.

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
    if not compat.check({"runner._prepare_inputs", "runner.sample_tokens", "runner.take_draft_token_ids",
                         "engine_core.post_step"}):
        compat.install_patch("runner._prepare_inputs", fast_path.make_prepare_inputs_wrapper)
        compat.install_patch("runner.sample_tokens", fast_path.make_sample_tokens_wrapper)
        compat.install_patch("engine_core.post_step", fast_path.make_post_step_wrapper)
    compat.extend_scheduler_stats()
