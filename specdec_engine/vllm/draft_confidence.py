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

Only engines configured with ``method: tilespec`` capture (``additional_config["tilespec"]``); paths vLLM
takes that do not go through ``_greedy_sample`` (probabilistic drafting for sampled batches, local argmax
reduction, heterogeneous vocabularies) send no confidence, and the scheduler then scores those requests by
their acceptance history, as for prompt lookup.
"""

from __future__ import annotations

from typing import Callable

CONF_ATTR = "specdec_conf"
_STEPS = "_specdec_conf_steps"
_LAST = "_specdec_last_conf"


def _captures(proposer) -> bool:
    flag = getattr(proposer, "_specdec_capture", None)
    if flag is None:
        cfg = getattr(proposer, "vllm_config", None)
        extra = getattr(cfg, "additional_config", None) or {}
        flag = isinstance(extra, dict) and "tilespec" in extra
        proposer._specdec_capture = flag
    return flag


def make_greedy_sample_wrapper(original: Callable) -> Callable:
    def _greedy_sample(self, hidden_states):
        steps = getattr(self, _STEPS, None)
        if (steps is None or not _captures(self) or getattr(self, "use_local_argmax_reduction", False)
                or getattr(self, "use_heterogeneous_vocab", False)):
            return original(self, hidden_states)
        from specdec_kernels import draft_confidence

        logits = self.model.compute_logits(hidden_states)
        token_ids, max_prob, _ = draft_confidence(logits)
        steps.append(max_prob)
        return token_ids.long()  # int64, as Tensor.argmax returns and vLLM's proposer expects

    return _greedy_sample


def make_propose_wrapper(original: Callable) -> Callable:
    def propose(self, *args, **kwargs):
        if not _captures(self):
            return original(self, *args, **kwargs)
        setattr(self, _STEPS, [])
        setattr(self, _LAST, None)
        try:
            drafts = original(self, *args, **kwargs)
            steps = getattr(self, _STEPS)
            if steps and drafts is not None and hasattr(drafts, "shape") and drafts.dim() == 2:
                import torch

                conf = torch.stack(steps, dim=1) if len(steps) > 1 else steps[0].view(drafts.shape[0], -1)
                if conf.shape == drafts.shape:
                    setattr(self, _LAST, conf)
            return drafts
        finally:
            setattr(self, _STEPS, None)

    return propose


def make_take_draft_token_ids_wrapper(original: Callable) -> Callable:
    def take_draft_token_ids(self):
        out = original(self)
        drafter = getattr(self, "drafter", None)
        conf = getattr(drafter, _LAST, None) if drafter is not None else None
        if out is not None and conf is not None and conf.shape[0] >= len(out.req_ids):
            setattr(out, CONF_ATTR, conf[: len(out.req_ids)].float().cpu().tolist())
        return out

    return take_draft_token_ids
