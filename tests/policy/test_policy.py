import numpy as np

from specdec_engine.policy import Calibration, FallbackConfig, SpecState, TileSpecPolicy


def test_plan_learn_counters_add_up(h100_model):
    pol = TileSpecPolicy(h100_model, 8)
    rng = np.random.default_rng(0)
    for _ in range(50):
        raw = np.cumprod(rng.uniform(0.4, 0.99, (16, 8)), axis=1)
        plan = pol.plan(raw)
        acc = np.array([rng.integers(0, k + 1) for k in plan.k])
        pol.learn(raw, plan.k, acc)
        pol.observe_step_time(plan.selection.predicted_ms * 1.1)
    st = pol.take_stats()
    assert st.steps == 50
    assert sum(st.chosen_k) == 50 * 16
    assert st.accepted_tokens <= st.draft_tokens
    assert sum(st.accepted_per_pos) == st.accepted_tokens
    assert st.timed_steps == 50 and abs(st.timed_measured_ms / st.timed_predicted_ms - 1.1) < 1e-9
    assert st.calibration_pairs == pol.calibration.n_pairs > 0
    assert pol.take_stats().steps == 0  # counters restart


def test_useless_drafts_switch_speculation_off_and_it_stays_cheap(h100_model):
    pol = TileSpecPolicy(h100_model, 8, calibration=Calibration(),
                         fallback=FallbackConfig(min_dwell_steps=10, patience_steps=10, probe_interval_steps=100,
                                                 window=32))
    raw = np.full((32, 8), 0.9) ** np.arange(1, 9)  # the drafter is sure of itself...
    for _ in range(300):
        plan = pol.plan(raw)
        pol.learn(raw, plan.k, np.zeros(32, np.int64))  # ...and always wrong
    assert pol.fallback.state in (SpecState.OFF, SpecState.PROBE)
    st = pol.take_stats()
    assert st.steps_spec_off > 200


def test_step_time_fit_separates_drafter_steps_from_verified_drafts():
    """A model drafter costs per draft step (the deepest K), verification per draft: both are recovered."""
    from specdec_engine.policy.policy import StepTimeFit

    rng = np.random.default_rng(0)
    fit = StepTimeFit(decay=0.0)
    for _ in range(400):
        depth = int(rng.integers(0, 8))
        drafts = int(rng.integers(0, 4 * depth + 1))
        fit.add(drafts, 3.0 + 0.2 * drafts + 1.5 * depth + rng.normal(0, 0.05), depth=depth)
    overhead, per_draft, per_depth = fit.solve_with_depth()
    assert abs(overhead - 3.0) < 0.1 and abs(per_draft - 0.2) < 0.02 and abs(per_depth - 1.5) < 0.03


def test_depth_cost_turns_a_costly_model_drafter_off_and_keeps_a_cheap_one():
    """With the drafter's per-step cost learned, plans stop drafting when a draft step costs more than it earns."""
    from specdec_engine.policy import LatencyModel

    lat = LatencyModel.from_samples([(b, n, 5.0 + 0.01 * n) for b in (1, 4, 8) for n in range(b, 41)])
    rng = np.random.default_rng(0)
    for per_step, want_spec in ((20.0, False), (0.2, True)):
        pol = TileSpecPolicy(lat, 4, learn_overhead=True)
        pol.use_depth_cost()
        for _ in range(300):
            raw = np.cumprod(rng.uniform(0.2, 0.5, (4, 4)), axis=1)
            plan = pol.plan(raw)
            depth = min(4, int(plan.k.max()) + 1)
            pol.note_depth(depth)
            pol.observe_step_time(5.0 + 0.01 * (4 + int(plan.k.sum())) + per_step * depth)
        ks = [int(pol.plan(np.full((4, 4), 0.3) ** np.arange(1, 5)).k.max()) for _ in range(5)]
        assert (max(ks) > 0) == want_spec, (per_step, pol.per_depth_ms, ks)
