"""The TILESPEC speculative algorithm, registered with ``SpeculativeAlgorithm.register``.

Three names are registered, one class behind them:

- ``TILESPEC`` is what the operator types. At server-args resolution (launcher process) its
  ``handle_server_args`` validates our config file, settles the EAGLE family underneath (``base``:
  configured, or read from the draft's ``config.json``) and rewrites ``speculative_algorithm`` to
- ``TILESPEC_EAGLE3`` or ``TILESPEC_EAGLE``, which is what the scheduler processes read from the
  (pickled) server args. Those processes load the plugin themselves (SGLang calls ``load_plugins()`` at
  the top of every scheduler process), so ``SpeculativeAlgorithm.from_string`` resolves the name to
  this class again there, with the right ``is_eagle3()`` before the target model is even built (it decides
  whether the target captures the auxiliary hidden states an EAGLE3 draft reads). Nothing relies on
  state of the launcher process.

Every ``is_*`` / ``supports_*`` predicate and every other algorithm method SGLang calls (future maps,
disaggregation inputs, verify widths) answers as the built-in EAGLE or EAGLE3 algorithm does, except:

- ``create_worker``: :class:`~specdec_engine.sglang.worker.TileSpecEagleWorker` (EAGLE's V2 worker with
  our policy in its adaptive controller), overlap scheduling supported;
- ``handle_server_args``: top-k 1 (a chain: what adaptive step counts need), the largest candidate step
  count as the startup width so every buffer is sized for it, SGLang's EAGLE defaults for max running
  requests and overlap on CPU;
- ``resolve_max_speculative_num_draft_tokens``: largest candidate + 1.

SGLang checks some features by the algorithm's *name* ("EAGLE"/"EAGLE3": watermarking, unified memory,
LoRA-with-speculation, rejection-sampling validation, the flashinfer plan stream); TILESPEC does not pass
those name checks and is treated there like any registered algorithm (README, SGLang section).
"""

from __future__ import annotations

import logging

from .config import ALGORITHM, TileSpecConfigError, load_config, resolve_base

logger = logging.getLogger("specdec_engine.sglang")

RESOLVED_NAMES = {"EAGLE3": f"{ALGORITHM}_EAGLE3", "EAGLE": f"{ALGORITHM}_EAGLE"}
OWN_METHODS = {"create_worker", "handle_server_args", "resolve_max_speculative_num_draft_tokens"}


def base_of(name: str) -> str | None:
    """'EAGLE3' / 'EAGLE' for a resolved TILESPEC name, None for the unresolved 'TILESPEC'."""
    for base, resolved in RESOLVED_NAMES.items():
        if name.upper() == resolved:
            return base
    return None


def _validate(server_args) -> None:
    """``validate_server_args`` of every TILESPEC name: the config file parses (errors name the key)."""
    load_config(getattr(server_args, "speculative_adaptive_config", None))


def _make_class():
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
    from sglang.srt.speculative.spec_registry import CustomSpecAlgo

    def _builtin(self):
        return SpeculativeAlgorithm[self.base or "EAGLE3"]

    def _delegate(method_name):
        def method(self, *args, **kwargs):
            return getattr(self.builtin, method_name)(*args, **kwargs)

        method.__name__ = method_name
        method.__doc__ = f"As the built-in EAGLE/EAGLE3 algorithm's {method_name}."
        return method

    class TileSpecAlgo(CustomSpecAlgo):
        """TILESPEC: EAGLE/EAGLE3 underneath, our worker and server-args handling on top."""

        @property
        def base(self) -> str | None:
            return base_of(self.name)

        builtin = property(_builtin)

        def __getattr__(self, item):  # algorithm methods CustomSpecAlgo lacks (future map, hidden states, ...)
            if item.startswith("_") or item in ("name", "factory", "supports_overlap", "validate_server_args"):
                raise AttributeError(item)
            return getattr(self.builtin, item)

        def create_worker(self, server_args):
            if self.base is None:
                raise TileSpecConfigError(
                    f"speculative_algorithm {ALGORITHM!r} reached the scheduler unresolved: the {ALGORITHM} plugin "
                    "was not loaded while SGLang resolved the server args (is specdec-engine installed in the "
                    "launching environment, and SGLANG_PLUGINS unset or naming 'tilespec'?)")
            return super().create_worker(server_args)

        def handle_server_args(self, server_args) -> None:
            handle_server_args(server_args)

        def resolve_max_speculative_num_draft_tokens(self, server_args):
            return load_config(getattr(server_args, "speculative_adaptive_config", None)).k_max + 1

        def __repr__(self) -> str:
            return f"TileSpecAlgo({self.name!r})"

    # every predicate (is_*, supports_*, has_*, ...) answers as the built-in base does
    own = set(OWN_METHODS) | {"is_some", "is_none", "is_speculative"}
    for attr in list(vars(SpeculativeAlgorithm)) + [n for n in dir(CustomSpecAlgo) if not n.startswith("_")]:
        if attr in own or attr.startswith("_") or attr in vars(TileSpecAlgo):
            continue
        if attr.startswith(("is_", "supports_", "has_", "carries_", "need_", "get_num_tokens")) and \
                callable(getattr(CustomSpecAlgo, attr, None) or vars(SpeculativeAlgorithm).get(attr)):
            setattr(TileSpecAlgo, attr, _delegate(attr))
    return TileSpecAlgo


def handle_server_args(server_args) -> None:
    """Resolve ``TILESPEC`` in place (real ServerArgs before 0.5.23, SGLang's recording stand-in after).

    Only reads and assigns attributes, so the same code runs on both generations.
    """
    cfg = load_config(getattr(server_args, "speculative_adaptive_config", None))
    name = str(server_args.speculative_algorithm).upper()
    base = base_of(name) or resolve_base(cfg, getattr(server_args, "speculative_draft_model_path", None))
    if getattr(server_args, "speculative_draft_model_path", None) is None:
        raise TileSpecConfigError(f"--speculative-algorithm {ALGORITHM} needs --speculative-draft-model-path "
                                  "(an EAGLE or EAGLE3 draft)")
    topk = getattr(server_args, "speculative_eagle_topk", None)
    if topk not in (None, 1):
        raise TileSpecConfigError(f"--speculative-eagle-topk {topk}: {ALGORITHM} drafts a chain (top-k 1); "
                                  "drop the flag")
    k_max = cfg.k_max
    steps = getattr(server_args, "speculative_num_steps", None)
    if steps not in (None, k_max):
        raise TileSpecConfigError(
            f"--speculative-num-steps {steps}: {ALGORITHM} chooses the step count every round among "
            f"candidate_steps {cfg.candidate_steps}; leave the flag out (the largest, {k_max}, is the startup width)")
    draft_tokens = getattr(server_args, "speculative_num_draft_tokens", None)
    if draft_tokens not in (None, k_max + 1):
        raise TileSpecConfigError(f"--speculative-num-draft-tokens {draft_tokens}: must be left out "
                                  f"({ALGORITHM} uses steps + 1 = {k_max + 1} at the largest candidate)")
    if getattr(server_args, "speculative_adaptive", False):
        raise TileSpecConfigError(f"--speculative-adaptive selects SGLang's own adaptive EAGLE policy; {ALGORITHM} is "
                                  "adaptive by itself: drop the flag (its options go in --speculative-adaptive-config)")
    server_args.speculative_algorithm = RESOLVED_NAMES[base]
    server_args.speculative_eagle_topk = 1
    server_args.speculative_num_steps = k_max
    server_args.speculative_num_draft_tokens = k_max + 1
    # SGLang's EAGLE-family defaults (arg_groups/speculative_hook.py: _handle_eagle_family)
    if getattr(server_args, "max_running_requests", 0) is None:
        server_args.max_running_requests = 48
    if getattr(server_args, "device", None) == "cpu" and not getattr(server_args, "disable_overlap_schedule", True):
        server_args.disable_overlap_schedule = True
    logger.info("TileSpec: --speculative-algorithm %s over %s, candidate steps %s (startup width %d)",
                ALGORITHM, base, cfg.candidate_steps, k_max)


def worker_factory(server_args):
    """The worker class the scheduler instantiates (imports the EAGLE V2 worker: GPU-side modules)."""
    from .worker import tilespec_worker_class

    return tilespec_worker_class()


_REGISTERED: dict[str, object] = {}


def register() -> dict[str, object]:
    """Register TILESPEC, TILESPEC_EAGLE3 and TILESPEC_EAGLE (idempotent per process)."""
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    if _REGISTERED:
        return dict(_REGISTERED)
    cls = _make_class()
    for name in (ALGORITHM, *RESOLVED_NAMES.values()):
        try:
            SpeculativeAlgorithm.register(name, supports_overlap=True, validate_server_args=_validate,
                                          spec_class=cls)(worker_factory)
        except ValueError as err:
            if "already registered" not in str(err):
                raise
        _REGISTERED[name] = SpeculativeAlgorithm.from_string(name)
    return dict(_REGISTERED)
