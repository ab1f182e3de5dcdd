"""How deep the model drafter drafts next: the scheduler's window (TileSpecScheduler._next_depth), and what the
policy would verify with drafts continued past the proposal (policy.depth + TileSpecPolicy.deepest_worth).

The window is our own arithmetic on the plan's K; it needs no engine, so the scheduler object is made without one.
"""
import collections

import numpy as np

from specdec_engine.policy import ConfidenceExtrapolator, LatencyModel, TileSpecPolicy
from specdec_engine.vllm.scheduler import TileSpecScheduler


def _scheduler(k_max=7):
    s = object.__new__(TileSpecScheduler)
    s._k_max, s._depth = k_max, k_max
    s._recent_k = collections.deque(maxlen=TileSpecScheduler.DEPTH_WINDOW)
    return s


def test_one_unsure_step_does_not_cut_the_next_proposal():
    s = _scheduler()
    for _ in range(5):
        s._next_depth(3)
    assert s._next_depth(1) == 3  # one K=1 plan: the next proposal is still as deep as the last plans wanted
    assert [s._next_depth(1) for _ in range(TileSpecScheduler.DEPTH_WINDOW)][-1] == 1  # a lasting K=1: it follows


def test_no_drafts_wanted_still_drafts_one():
    s = _scheduler()
    for _ in range(TileSpecScheduler.DEPTH_WINDOW + 1):
        depth = s._next_depth(0)
    assert depth == 1  # vLLM's first pass runs anyway; its draft is what the policy scores


def test_confidence_continues_with_the_drafters_typical_probability_per_position():
    ex = ConfidenceExtrapolator(4)
    probs = np.array([[0.9, 0.8, np.nan, np.nan], [0.9, 0.8, 0.5, np.nan]])
    for _ in range(3):
        ex.observe(probs)
    mu = ex.log_p()
    assert np.allclose(mu[:3], np.log([0.9, 0.8, 0.5]))
    assert mu[3] == mu[2]  # never drafted that deep: the deepest seen position's
    cum = np.array([[0.9, np.nan, np.nan, np.nan], [np.nan] * 4])
    out = ex.extend(cum, np.array([3, 4]))
    assert np.allclose(out[0, :3], [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.5]) and np.isnan(out[0, 3])  # up to the limit
    assert np.isnan(out[1]).all()  # a request without a draft gets none


def _policy(per_step_ms, k_max=6, batch=4):
    """Forward 5 ms + 0.01 ms per token; the drafter's first pass 1 ms and ``per_step_ms`` per further step."""
    lat = LatencyModel.from_samples([(b, n, 5.0 + 0.01 * n) for b in (1, 4, 8) for n in range(b, 8 * (k_max + 1))])
    pol = TileSpecPolicy(lat, k_max)
    pol.use_depth_cost()
    for depth in (1, 2, 3):
        for _ in range(20):
            pol.observe_drafter(batch, depth, 1.0 + per_step_ms * (depth - 1), first_ms=1.0,
                                step_ms=per_step_ms if depth > 1 else None)
    return pol


def test_a_saturated_plan_asks_how_deep_it_would_go_and_the_answer_follows_the_draft_cost():
    """A plan over 1-draft proposals takes the draft of every confident request; continued to K_max=6 the same
    requests are worth 6 draft steps when a step is cheap and no further one when it is dear, and never more
    than the requests may still generate."""
    ex = ConfidenceExtrapolator(6)
    ex.observe(np.full((4, 6), 0.95))  # this drafter's tokens are usually right at every depth
    raw = np.full((4, 6), np.nan)
    raw[:, 0] = 0.95
    limit = np.full(4, 6)
    for per_step, wanted_depth in ((0.05, 6), (30.0, 1)):
        pol = _policy(per_step)
        plan = pol.plan(raw, np.ones(4, np.int64))
        assert int(plan.k.max()) == 1  # saturated: it took the deepest drafts there were
        assert pol.deepest_worth(ex.extend(raw, limit), limit) == wanted_depth, per_step
    near_end = np.full(4, 3)
    assert pol.deepest_worth(ex.extend(raw, near_end), near_end) <= 3


def test_the_what_if_changes_no_counter():
    pol = _policy(0.05)
    raw = np.full((4, 6), 0.9) ** np.arange(1, 7)
    pol.plan(raw, np.full(4, 6))
    before = (pol.stats.steps, list(pol.stats.chosen_k), pol.stats.draft_tokens, pol.rates.rate(4))
    assert pol.deepest_worth(raw, np.full(4, 6)) > 0
    assert (pol.stats.steps, list(pol.stats.chosen_k), pol.stats.draft_tokens, pol.rates.rate(4)) == before
