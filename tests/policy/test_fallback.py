import pytest

from specdec_engine.policy import FallbackConfig, FallbackController, SpecState

CFG = FallbackConfig(min_gain=0.02, accept_floor=0.05, window=64, patience_steps=10,
                     probe_interval_steps=50, probe_max_interval_steps=400, probe_steps=5,
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
    run(fc, 5, 1.5, 8, 6)
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
        run(fc, 5, 1.01, 8, 0)  # probe fails
        assert fc.state == SpecState.OFF
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
