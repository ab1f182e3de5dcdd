"""Every SGLang symbol tilespec touches, in one place, each checked before use.

Usage::

    from specdec_engine.sglang import compat
    compat.check()                  # [] on a supported SGLang, else one line per problem
    compat.require()                # raises UnsupportedSGLang naming the version and what is missing
    python -m specdec_engine.sglang.compat      # the same report, for an operator

Each :class:`Touch` names its target by dotted path (``module:Qualname[.attr]``) and says how it is used:

- ``CALL``: a public or private callable we call (its parameters are checked);
- ``REGISTER``: an SGLang registry we add to (plugin entry point, speculative algorithm);
- ``SUBCLASS``: a class we derive from (its methods we rely on are listed as further touches);
- ``OVERRIDE``: a method our subclass overrides and calls through ``super()``;
- ``PROTOCOL``: an SGLang protocol our class implements (the members are compared with ours);
- ``READ``: an attribute we read (instance attributes are checked in the ``__init__`` source).

``tier`` says where the touch is used: ``plugin`` (every process, at plugin load: cheap modules only),
``launch`` (when a server is started with ``--speculative-algorithm TILESPEC``: server-args resolution)
and ``worker`` (the scheduler process: the EAGLE worker and its CUDA-graph runners; GPU-only code paths,
checked here by import and signature because they cannot run on a CPU test machine).

Differences between the supported versions are handled here and nowhere else:

- 0.5.23 has ``AdaptiveSpecPolicy`` and ``AdaptiveController(worker, policy)``; 0.5.14 and 0.5.19 build
  their own ``AdaptiveSpeculativeParams`` inside ``AdaptiveController(worker, config_path)``, and our
  policy replaces its ``params`` attribute (same five members): :func:`make_adaptive_controller`.
- 0.5.23 hands a plugin's ``handle_server_args`` / ``validate_server_args`` a recorder whose attribute
  writes are declared as resolutions; older versions hand the ServerArgs itself. Our callbacks only read
  and assign attributes, which works with both.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("specdec_engine.sglang")

MIN_VERSION = "0.5.14"
TESTED_VERSIONS = ("0.5.23",)   # tests/sglang install this one; 0.5.14 and 0.5.19 were read, not run
SUPPORTED = f">={MIN_VERSION}"
ENTRY_POINT_GROUP = "sglang.srt.plugins"


class UnsupportedSGLang(RuntimeError):
    """This SGLang lacks something tilespec needs; the message names the version and the symbol."""


@dataclass(frozen=True)
class Touch:
    name: str
    target: str             # "module:Qualname[.attr]"
    kind: str               # CALL | REGISTER | SUBCLASS | OVERRIDE | PROTOCOL | READ
    why: str
    params: tuple = ()      # parameter names the callable must accept
    tier: str = "plugin"    # plugin | launch | worker
    optional: bool = False  # absent on some supported versions (handled here)


TOUCHES: tuple[Touch, ...] = (
    # ---------------------------------------------------------------- plugin (every process)
    Touch("plugins.load", "sglang.srt.plugins:load_plugins", "REGISTER",
          f"discovers the '{ENTRY_POINT_GROUP}' entry point 'tilespec' in every SGLang process"),
    Touch("plugins.group", "sglang.srt.plugins:GENERAL_PLUGINS_GROUP", "READ",
          f"the entry-point group name, expected '{ENTRY_POINT_GROUP}'"),
    Touch("spec.register", "sglang.srt.speculative.spec_info:SpeculativeAlgorithm.register", "REGISTER",
          "registers TILESPEC (and TILESPEC_EAGLE / TILESPEC_EAGLE3, what it resolves to)",
          ("name", "supports_overlap", "validate_server_args", "spec_class")),
    Touch("spec.from_string", "sglang.srt.speculative.spec_info:SpeculativeAlgorithm.from_string", "CALL",
          "resolves a registered name to its CustomSpecAlgo", ("name",)),
    Touch("spec.custom", "sglang.srt.speculative.spec_registry:CustomSpecAlgo", "SUBCLASS",
          "TileSpecAlgo: EAGLE/EAGLE3 family predicates, server-args handling, the worker factory"),
    Touch("spec.custom.handle_server_args", "sglang.srt.speculative.spec_registry:CustomSpecAlgo.handle_server_args",
          "OVERRIDE", "topk 1, the largest candidate step count as startup width", ("server_args",)),
    Touch("spec.custom.create_worker", "sglang.srt.speculative.spec_registry:CustomSpecAlgo.create_worker",
          "CALL", "the scheduler asks the algorithm for its worker class", ("server_args",)),
    Touch("spec.custom.resolve_max", "sglang.srt.speculative.spec_registry:"
          "CustomSpecAlgo.resolve_max_speculative_num_draft_tokens", "OVERRIDE",
          "buffers sized for the largest candidate (0.5.19+; 0.5.14 sizes from the startup width, which is "
          "the largest candidate too)", ("server_args",), optional=True),
    Touch("adaptive.controller", "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController", "CALL",
          "owns the pre-built runtime state per step count and switches between them", ("worker",)),
    Touch("adaptive.controller.activate_step_by_batch",
          "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController.activate_step_by_batch", "CALL",
          "asks the policy for the step count before each decode round", ("batch_size",)),
    Touch("adaptive.controller.on_verify_complete",
          "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController.on_verify_complete", "CALL",
          "hands the policy each verify's accepted drafts per request",
          ("num_correct_drafts_per_req", "batch_size")),
    Touch("adaptive.controller.init_states",
          "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController.init_states", "CALL",
          "builds one runtime state (draft + verify CUDA graphs) per candidate step count",
          ("cuda_graph_bs",)),
    Touch("adaptive.controller.params", "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController.__init__",
          "READ", "self.params: the policy seat; self._states: the runtime state per step count (profiled at warmup); (ours replaces the static one after warmup; before 0.5.23 it "
          "replaces the built-in AdaptiveSpeculativeParams)"),
    Touch("adaptive.policy", "sglang.srt.speculative.adaptive_runtime_state:AdaptiveSpecPolicy", "PROTOCOL",
          "TileSpecAdaptivePolicy implements it (0.5.23+; before, the same members on AdaptiveSpeculativeParams)",
          optional=True),
    Touch("adaptive.params", "sglang.srt.speculative.adaptive_spec_params:AdaptiveSpeculativeParams", "PROTOCOL",
          "the built-in policy: its public members are the protocol on versions without AdaptiveSpecPolicy"),
    Touch("tp_group", "sglang.srt.distributed.parallel_state:get_tp_group", "CALL",
          "TP rank 0's profile and calibration go to every rank (same decisions on every rank)", tier="worker"),
    Touch("tp_group.broadcast_object", "sglang.srt.distributed.parallel_state:GroupCoordinator.broadcast_object",
          "CALL", "the broadcast itself", ("obj", "src"), tier="worker"),
    # ---------------------------------------------------------------- launch (server-args resolution)
    Touch("server_args.prepare", "sglang.srt.server_args:prepare_server_args", "CALL",
          "SGLang's own argparse: --speculative-algorithm TILESPEC, --speculative-adaptive-config FILE",
          ("argv",), tier="launch"),
    Touch("server_args.fields", "sglang.srt.server_args:ServerArgs", "READ",
          "speculative_algorithm / _draft_model_path / _num_steps / _eagle_topk / _num_draft_tokens / "
          "_adaptive_config, max_running_requests, disable_overlap_schedule, enable_mixed_chunk, device",
          tier="launch"),
    # ---------------------------------------------------------------- worker (scheduler process, GPU)
    Touch("worker.eagle_v2", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2", "SUBCLASS",
          "TileSpecEagleWorker: EAGLE/EAGLE3 draft + verify, with our policy as its adaptive policy",
          tier="worker"),
    Touch("worker.init", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.__init__", "OVERRIDE",
          "creates the adaptive controller with our policy after SGLang's own init", ("server_args",),
          tier="worker"),
    Touch("worker.init_cuda_graphs", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.init_cuda_graphs",
          "OVERRIDE", "after SGLang captures every candidate's graphs: load or profile the latency model",
          tier="worker"),
    Touch("worker.adaptive_controller", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.__init__",
          "READ", "self.adaptive_controller (set to ours), self._draft_worker, self.server_args",
          ("server_args",), tier="worker"),
    Touch("worker.build_state", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.build_adaptive_runtime_state",
          "CALL", "called by the controller for each candidate step count",
          ("speculative_num_steps", "speculative_num_draft_tokens", "cuda_graph_bs"), tier="worker"),
    Touch("worker.apply_state", "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.apply_runtime_state",
          "CALL", "switches draft + verify resources to a step count", ("state",), tier="worker"),
    Touch("worker.on_verify_complete_cpu",
          "sglang.srt.speculative.eagle_worker_v2:EAGLEWorkerV2.on_verify_complete_cpu", "CALL",
          "the batch-result processor feeds accept counts here (to the controller)",
          ("num_correct_drafts_per_req", "batch_size"), tier="worker"),
    Touch("runtime_state", "sglang.srt.speculative.adaptive_runtime_state:SpecRuntimeState", "READ",
          "target_graph_runner / cuda_graph_runner of each step count's state (profiled at warmup)",
          tier="worker"),
    Touch("graph_runner", "sglang.srt.model_executor.runner.decode_cuda_graph_runner:DecodeCudaGraphRunner", "READ",
          "self.backend: the capture/replay backend of a verify (and draft) graph runner", tier="worker"),
    Touch("graph_backend.full", "sglang.srt.model_executor.runner_backend.full_cuda_graph_backend:"
          "FullCudaGraphBackend.__init__", "READ",
          "self._graphs: {ShapeKey(size=batch): torch.cuda.CUDAGraph}, replayed (timed) at warmup", tier="worker"),
    Touch("graph_backend.replay_session", "sglang.srt.model_executor.runner_backend.full_cuda_graph_backend:"
          "FullCudaGraphBackend.replay_session", "CALL", "the context SGLang replays its graphs in",
          tier="worker"),
)

_INSTANCE_ATTRS = {  # READ touches on instance attributes: the names that must appear as `self.<name>`
    "worker.adaptive_controller": ("adaptive_controller", "_draft_worker", "server_args"),
    "graph_backend.full": ("_graphs",),
    "adaptive.controller.params": ("params", "_states"),
}


def _resolve(target: str) -> Any:
    module_name, _, qual = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def sglang_version() -> str:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001
        return "not installed"


def version_supported(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) >= Version(MIN_VERSION)
    except InvalidVersion:
        return False


def _check_touch(t: Touch) -> str | None:
    try:
        obj = _resolve(t.target)
    except (ImportError, AttributeError) as err:
        if t.optional:
            return None
        return f"{t.target} ({t.kind}: {t.why}) is missing: {type(err).__name__}: {err}"
    if t.name == "plugins.group" and obj != ENTRY_POINT_GROUP:
        return f"{t.target} is {obj!r}, expected {ENTRY_POINT_GROUP!r}"
    if t.kind == "PROTOCOL":
        from .policy import TileSpecAdaptivePolicy

        want = protocol_members(obj)
        missing = sorted(m for m in want if not hasattr(TileSpecAdaptivePolicy, m))
        if missing:
            return f"{t.target} asks for {', '.join(missing)}, which TileSpecAdaptivePolicy lacks"
    if t.params and callable(obj):
        try:
            names = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            names = None
        if names is not None and not any(
                p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(obj).parameters.values()):
            missing = [p for p in t.params if p not in names]
            if missing:
                return f"{t.target} has no parameter(s) {', '.join(missing)} ({t.kind}: {t.why})"
    attrs = _INSTANCE_ATTRS.get(t.name)
    if attrs:
        try:
            src = inspect.getsource(obj)
        except (OSError, TypeError):
            src = ""
        missing = [a for a in attrs if f"self.{a}" not in src]
        if src and missing:
            return f"{t.target} no longer sets {', '.join('self.' + a for a in missing)} ({t.why})"
    return None


def check(tiers: set[str] | None = None) -> list[str]:
    """Problems with this SGLang (empty: every touch exists with the expected signature).

    ``tiers`` restricts the check (the plugin entry checks ``{"plugin"}``, which imports only light
    modules; ``TILESPEC`` at launch adds ``"launch"``; the worker factory checks ``"worker"``).
    """
    ver = sglang_version()
    if not version_supported(ver):
        return [f"SGLang {ver} is outside the supported range {SUPPORTED} (the plugin API "
                f"'{ENTRY_POINT_GROUP}', SpeculativeAlgorithm.register and the adaptive controller arrived in "
                f"{MIN_VERSION})"]
    problems = []
    for t in TOUCHES:
        if tiers is not None and t.tier not in tiers:
            continue
        p = _check_touch(t)
        if p:
            problems.append(p)
    return problems


def require(tiers: set[str] | None = None) -> None:
    problems = check(tiers)
    if problems:
        raise UnsupportedSGLang(f"tilespec supports SGLang {SUPPORTED} (tested: {', '.join(TESTED_VERSIONS)}); "
                                f"this SGLang ({sglang_version()}) cannot be used: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- versions
def protocol_members(proto: type) -> set[str]:
    """Public members a policy must provide (from SGLang's Protocol, or its built-in policy's class)."""
    if getattr(proto, "_is_protocol", False):
        attrs = getattr(proto, "__protocol_attrs__", None)
        if attrs is None:  # Python < 3.12
            from typing import _get_protocol_attrs  # type: ignore[attr-defined]

            attrs = _get_protocol_attrs(proto)
        return set(attrs)
    return {n for n, v in vars(proto).items() if not n.startswith("_") and (callable(v) or isinstance(v, property)
                                                                         or hasattr(v, "__set_name__"))}


def make_adaptive_controller(worker, policy):
    """SGLang's own AdaptiveController driving ``policy`` (both constructor generations)."""
    from sglang.srt.speculative import adaptive_runtime_state as ars

    if hasattr(ars, "AdaptiveSpecPolicy"):  # 0.5.23+: AdaptiveController(worker, policy)
        return ars.AdaptiveController(worker, policy)
    # 0.5.14 / 0.5.19: AdaptiveController(worker, config_path) builds AdaptiveSpeculativeParams from the
    # built-in default config; the controller only reads .params through the five protocol members
    controller = ars.AdaptiveController(worker, None)
    controller.params = policy
    return controller


def install_policy(controller, policy) -> None:
    """Seat ``policy`` in a live controller (``AdaptiveController.params``, read on every call)."""
    controller.params = policy


def controller_states(controller) -> dict:
    """{steps: SpecRuntimeState} the controller built (``AdaptiveController._states``)."""
    return dict(getattr(controller, "_states", {}) or {})


def tp_rank_and_size() -> tuple[int, int]:
    """This scheduler's tensor-parallel rank and group size ((0, 1) when no group exists)."""
    try:
        from sglang.srt.distributed.parallel_state import get_tp_group

        g = get_tp_group()
        return int(g.rank_in_group), int(g.world_size)
    except Exception:  # noqa: BLE001
        return 0, 1


def broadcast_from_tp_rank0(obj):
    """``obj`` of TP rank 0 on every rank (SGLang's GroupCoordinator.broadcast_object); as is without TP."""
    rank, size = tp_rank_and_size()
    if size <= 1:
        return obj
    from sglang.srt.distributed.parallel_state import get_tp_group

    return get_tp_group().broadcast_object(obj if rank == 0 else None, src=0)


def iter_verify_graphs(graph_runner):
    """(batch size, replayable graph) for every graph a decode/verify CUDA-graph runner captured.

    ``DecodeCudaGraphRunner.backend._graphs`` maps ``ShapeKey(size=batch, ...)`` to the captured graph
    (``FullCudaGraphBackend`` and ``BreakableCudaGraphBackend``, 0.5.14 to 0.5.23). Variant keys (LoRA,
    PD-multiplexing streams, attention variants) are skipped: the default variant is what decoding runs.
    GPU-only.
    """
    backend = getattr(graph_runner, "backend", None)
    graphs = getattr(backend, "_graphs", None)
    if not isinstance(graphs, dict):
        return
    for key, graph in sorted(graphs.items(), key=lambda kv: int(getattr(kv[0], "size", kv[0]))):
        if any(getattr(key, a, None) is not None for a in ("stream_idx", "variant_label", "attention_variant")):
            continue
        yield int(getattr(key, "size", key)), graph


def replay_session(graph_runner):
    """The backend's replay context (SGLang enters it around every replay)."""
    import contextlib

    session = getattr(getattr(graph_runner, "backend", None), "replay_session", None)
    return session() if session is not None else contextlib.nullcontext()


def report() -> str:
    lines = [f"SGLang {sglang_version()}; tilespec supports {SUPPORTED} (tested: {', '.join(TESTED_VERSIONS)})"]
    for t in TOUCHES:
        p = None if not version_supported(sglang_version()) else _check_touch(t)
        lines.append(f"  [{'ok' if p is None else 'MISSING'}] {t.tier:6s} {t.kind:9s} {t.target}"
                     + (f"\n           {p}" if p else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
    sys.exit(1 if check() else 0)
