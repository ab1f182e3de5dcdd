"""How deep the model drafter drafts next (TileSpecScheduler._next_depth): no ratchet down, growth on saturation.

The rule is our own arithmetic on the plan's K; it needs no engine, so the scheduler object is made without one.
"""
import collections

import numpy as np

from specdec_engine.vllm.scheduler import TileSpecScheduler


def _scheduler(k_max=7):
    s = object.__new__(TileSpecScheduler)
    s._k_max, s._depth, s._saturated_steps = k_max, k_max, 0
    s._recent_k = collections.deque(maxlen=TileSpecScheduler.DEPTH_WINDOW)
    s._declined = collections.deque(maxlen=TileSpecScheduler.DECLINE_MEMORY)
    return s


def _plan(s, k_deepest, available):
    s._depth = s._next_depth(k_deepest, [object()], np.array([available]))
    return s._depth


def test_one_unsure_step_does_not_cut_the_next_proposals():
    s = _scheduler()
    for _ in range(5):
        _plan(s, 3, 7)
    assert _plan(s, 1, 3) == 3  # one K=1 plan: the next proposal is still as deep as recent plans chose
    assert [_plan(s, 1, 3) for _ in range(TileSpecScheduler.DEPTH_WINDOW)][-1] == 1  # a lasting K=1: it follows


def test_saturated_plans_deepen_the_proposal_up_to_k_max():
    s = _scheduler()
    depth = _plan(s, 1, 1)
    assert depth == 1
    seen = [depth]
    for _ in range(20):  # every plan takes the whole proposal
        seen.append(_plan(s, s._depth, s._depth))
    assert seen == sorted(seen) and seen[-1] == 7
    assert seen.index(7) <= 1 + 6 * TileSpecScheduler.GROW_EVERY


def test_no_drafts_wanted_still_drafts_one():
    s = _scheduler()
    for _ in range(TileSpecScheduler.DEPTH_WINDOW + 1):
        depth = _plan(s, 0, 5)
    assert depth == 1  # vLLM's first pass runs anyway; its draft is what the policy scores


def test_a_declined_deeper_draft_stops_growth_for_a_while():
    """A plan that had 4 drafts and took 3 said what the 4th is worth: no growing back to 4 on the next
    saturated plans (that cost a draft step for the whole batch on every other step), only after a while."""
    s = _scheduler()
    for _ in range(3):
        _plan(s, 3, 7)
    assert _plan(s, 3, 4) == 3  # declined the 4th draft
    seen = [_plan(s, 3, 3) for _ in range(TileSpecScheduler.DECLINE_MEMORY - 1)]
    assert seen == [3] * (TileSpecScheduler.DECLINE_MEMORY - 1)  # saturated at 3, but no growth yet
    later = [_plan(s, s._depth, s._depth) for _ in range(2 * TileSpecScheduler.GROW_EVERY)]
    assert max(later) > 3  # the decline is forgotten: saturated plans explore deeper again
