"""How many drafts the drafter proposes for the next step (TileSpecScheduler._proposal_depth).

Our own rule on the fallback state and recent plans; it needs no engine, so the scheduler object is made
without one (as in test_draft_depth.py).
"""
import types

from specdec_engine.policy import FallbackConfig, ProposalDepth, SpecState
from specdec_engine.policy.fallback import FallbackController
from specdec_engine.vllm.scheduler import TileSpecScheduler


def _scheduler(model_drafter=False, depth=8):
    s = object.__new__(TileSpecScheduler)
    s._policy = types.SimpleNamespace(fallback=FallbackController(FallbackConfig()))
    s._model_drafter = model_drafter
    s._depth_rule = ProposalDepth(depth, probe_every=0)  # starts at its K_max: ``depth``
    s._quiet_plans = s._quiet_steps = s._low_yield_steps = 0
    s._yields, s._step_groups, s._drafts_proposed = {}, {0: 1}, True
    return s


def test_prompt_lookup_proposes_every_step_while_plans_verify_drafts():
    s = _scheduler()
    for _ in range(100):
        s._note_plan(True)
        assert s._proposal_depth(8) == 8


def test_a_quiet_spell_proposes_one_step_in_four_and_a_verified_draft_ends_it():
    """After QUIET_PLANS plans in a row verified nothing (open generation at temperature 1), prompt lookup's
    search runs on one step in QUIET_DRAFT_EVERY; the first plan that verifies a draft brings every step back."""
    s = _scheduler()
    for _ in range(TileSpecScheduler.QUIET_PLANS - 1):
        s._note_plan(False)
    assert s._proposal_depth(8) == 8  # not quiet yet
    s._note_plan(False)
    depths = [s._proposal_depth(8) for _ in range(4 * TileSpecScheduler.QUIET_DRAFT_EVERY)]
    assert depths.count(8) == 4 and depths.count(0) == 4 * (TileSpecScheduler.QUIET_DRAFT_EVERY - 1)
    s._note_plan(True)
    assert [s._proposal_depth(8) for _ in range(5)] == [8] * 5


def test_a_probe_drafts_every_step_even_in_a_quiet_spell():
    s = _scheduler()
    for _ in range(TileSpecScheduler.QUIET_PLANS):
        s._note_plan(False)
    s._policy.fallback.state = SpecState.PROBE
    assert [s._proposal_depth(8) for _ in range(5)] == [8] * 5


def test_off_for_lack_of_acceptance_drafts_nothing_and_a_model_drafter_follows_its_depth():
    s = _scheduler()
    fb = s._policy.fallback
    fb.state, fb.off_for_gain = SpecState.OFF, False
    assert s._proposal_depth(8) == 0
    m = _scheduler(model_drafter=True, depth=3)
    for _ in range(TileSpecScheduler.QUIET_PLANS):
        m._note_plan(False)
    assert [m._proposal_depth(7) for _ in range(5)] == [3] * 5  # no quiet thinning: its first pass runs anyway


def test_a_long_quiet_spell_proposes_ever_more_rarely_down_to_one_step_in_sixteen():
    """Each further QUIET_PLANS quiet plans halve how often prompt lookup proposes (its search and the shadow
    plan cost every proposing step), down to one step in QUIET_DRAFT_MAX_EVERY; a verified draft resets it."""
    s = _scheduler()
    T = TileSpecScheduler
    for _ in range(T.QUIET_PLANS * 2):
        s._note_plan(False)
    depths = [s._proposal_depth(8) for _ in range(64)]
    assert depths.count(8) == 64 // (2 * T.QUIET_DRAFT_EVERY)
    for _ in range(T.QUIET_PLANS * 10):
        s._note_plan(False)
    depths = [s._proposal_depth(8) for _ in range(64)]
    assert depths.count(8) == 64 // T.QUIET_DRAFT_MAX_EVERY
    s._note_plan(True)
    assert [s._proposal_depth(8) for _ in range(5)] == [8] * 5


def test_proposals_that_yield_almost_nothing_thin_out_even_while_speculation_stays_on():
    """Open generation at temperature 1 can stay ON with prompt lookup finding a draft on ~2% of steps, so the
    quiet plans never add up; a yield under QUIET_YIELD tokens per request and proposing step thins the
    search the same way, ever more rarely, and one fruitful proposal brings every step back."""
    T = TileSpecScheduler
    s = _scheduler()
    s._step_groups = {2: 4}  # 4 requests at temperature 1
    for _ in range(400):  # 400 proposing steps with no draft found
        s._note_yield({}, {})
    assert s._low_yield()
    assert s._policy.fallback.state == SpecState.ON
    depths = [s._proposal_depth(8) for _ in range(T.YIELD_WINDOW)]
    assert depths.count(8) == T.YIELD_WINDOW // T.QUIET_DRAFT_EVERY
    depths = [s._proposal_depth(8) for _ in range(T.YIELD_WINDOW * 8)][-64:]
    assert depths.count(8) == 64 // T.QUIET_DRAFT_MAX_EVERY
    s._note_yield({2: 8}, {2: 1})  # one request accepted 8 drafts
    assert not s._low_yield()
    assert [s._proposal_depth(8) for _ in range(5)] == [8] * 5


def test_code_editing_yield_never_thins_the_search():
    """A request accepting a few drafts every few steps keeps prompt lookup searching on every step, however
    long the gaps without a draft in between (the gaps count only for steps that proposed)."""
    s = _scheduler()
    for step in range(2000):
        s._note_yield({0: 4} if step % 8 == 0 else {}, {0: 1} if step % 8 == 0 else {})
        assert s._proposal_depth(8) == 8


def test_steps_without_a_proposal_do_not_count_toward_the_yield():
    s = _scheduler()
    s._drafts_proposed = False
    for _ in range(1000):
        s._note_yield({}, {})
    assert s._yields == {} and not s._low_yield()


def test_drafts_found_often_but_rejected_are_left_to_the_fallback():
    """Drafts found for most requests and rejected yield nothing, but thinning them would starve the
    fallback's acceptance window (it switches speculation off for lack of acceptance, drafting nothing)."""
    s = _scheduler()
    s._step_groups = {2: 4}
    for _ in range(400):
        s._note_yield({}, {2: 3})
    assert s._yields[2][0] < TileSpecScheduler.QUIET_YIELD and not s._low_yield()
    assert [s._proposal_depth(8) for _ in range(20)] == [8] * 20


def test_greedy_requests_arriving_after_sampled_traffic_thinned_the_search_propose_every_step():
    """The yield is kept per request group: temperature-1 requests that yielded nothing thin the search, and the
    step greedy requests (whose group yielded well, or has no record yet) join, prompt lookup searches again."""
    s = _scheduler()
    s._step_groups = {2: 4}
    for _ in range(400):
        s._note_yield({}, {})
    assert s._proposal_depth(8) == 0 or [s._proposal_depth(8) for _ in range(8)].count(0) >= 6
    s._step_groups = {2: 3, 0: 1}  # a greedy request joins
    assert [s._proposal_depth(8) for _ in range(5)] == [8] * 5
