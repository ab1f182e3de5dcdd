import pytest

from specdec_engine.policy import FallbackConfig, FallbackController, SpecState

CFG = FallbackConfig(min_gain=0.02, accept_floor=0.05, window=64, patience_steps=10,
                     probe_interval_steps=50, probe_max_interval_steps=400, probe_min_drafts=16, probe_max_steps=20,
                     hysteresis=0.05, min_dwell_steps=20)


def run(fc, n, gain, drafted, accepted):
    states = []
    for _ in range(n):
        states.append(fc.observe(gain, drafted, accepted))
    return states


def test_switches_off_when_predicted_gain_vanishes_and_not_before_dwell():
    fc = FallbackController(CFG)
    states = run(fc, 15, 1.0, 4, 2)
    assert all(s == SpecState.ON for s in states)  # min_dwell_steps=20 not reached
    run(fc, 10, 1.0, 4, 2)
    assert fc.state == SpecState.OFF and "predicted gain" in fc.last_reason
    assert fc.off_for_gain and fc.drafting_useful  # keep drafting: shadow plans can bring it back


def test_shadow_plans_resume_and_steps_without_drafts_are_neutral():
    fc = FallbackController(CFG)
    run(fc, 30, 1.0, 4, 2)
    assert fc.state == SpecState.OFF and fc.off_for_gain
    for _ in range(3):  # good shadow evidence, interleaved with steps that had no drafts at all
        fc.observe(1.5, 0, 0)
        fc.observe(None, 0, 0)
        fc.observe(None, 0, 0)
    assert fc.state == SpecState.OFF
    fc.observe(1.5, 0, 0)
    assert fc.state == SpecState.ON and "shadow" in fc.last_reason
    # steps without drafts never push speculation off
    fc2 = FallbackController(CFG)
    run(fc2, 500, None, 0, 0)
    assert fc2.state == SpecState.ON


def test_a_probe_with_too_little_evidence_is_inconclusive():
    fc = FallbackController(CFG)
    run(fc, 40, 1.5, 8, 0)
    while fc.state == SpecState.OFF:
        fc.observe(None, 0, 0)
    run(fc, 20, None, 0, 0)  # the probe saw no drafts at all
    # it came from OFF for lack of acceptance: it stays there (no resume on the calibration's word)
    assert fc.state == SpecState.OFF and "inconclusive" in fc.last_reason and not fc.off_for_gain
    fc = FallbackController(CFG)
    run(fc, 30, 1.0, 4, 2)
    assert fc.off_for_gain
    while fc.state == SpecState.OFF:
        fc.observe(None, 0, 0)
    run(fc, 20, None, 0, 0)
    assert fc.state == SpecState.OFF and "inconclusive" in fc.last_reason and fc.off_for_gain


def test_switches_off_when_measured_acceptance_is_under_floor():
    fc = FallbackController(CFG)
    run(fc, 40, 1.5, 8, 0)  # selector is optimistic; reality rejects every first draft
    assert fc.state == SpecState.OFF and "acceptance" in fc.last_reason


def test_probes_then_returns_on_good_evidence():
    fc = FallbackController(CFG)
    run(fc, 40, 1.5, 8, 0)
    assert fc.state == SpecState.OFF
    off_steps = 0
    while fc.state == SpecState.OFF:
        fc.observe(None, 0, 0)
        off_steps += 1
    assert off_steps <= 50 and fc.state == SpecState.PROBE and fc.exploring
    run(fc, 2, 1.5, 8, 6)  # 16 drafting requests: enough evidence
    assert fc.state == SpecState.ON and "probe passed" in fc.last_reason


def test_failed_probes_back_off_exponentially_and_never_flap():
    fc = FallbackController(CFG)
    run(fc, 40, 1.5, 8, 0)
    intervals = []
    for _ in range(4):
        off = 0
        while fc.state == SpecState.OFF:
            fc.observe(None, 0, 0)
            off += 1
        intervals.append(off)
        run(fc, 2, 1.01, 8, 0)  # probe fails on measured evidence
        assert fc.state == SpecState.OFF and "probe failed" in fc.last_reason and not fc.drafting_useful
    assert intervals[1:] == [100, 200, 400]  # the first started counting during the ON->OFF run
    # an alternating signal around the threshold cannot toggle ON<->OFF every step
    fc = FallbackController(CFG)
    transitions = 0
    for i in range(200):
        before = fc.state
        fc.observe(1.5 if i % 2 else 1.0, 8, 4)
        transitions += fc.state != before
    assert transitions == 0


def test_gauge_values_are_documented():
    assert [int(s) for s in (SpecState.OFF, SpecState.ON, SpecState.PROBE)] == [0, 1, 2]


@pytest.mark.parametrize("kw", [{"window": 0}, {"accept_floor": 1.5}, {"probe_interval_steps": 10,
                                                                      "probe_max_interval_steps": 5},
                                {"min_gain": -1}])
def test_bad_config_is_named(kw):
    with pytest.raises(ValueError, match="fallback"):
        FallbackConfig(**kw)
