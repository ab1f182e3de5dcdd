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
