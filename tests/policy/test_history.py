import numpy as np

from specdec_engine.policy import AcceptanceHistory, Calibration


def test_requests_learn_their_own_rate_and_new_ones_start_from_their_class():
    h = AcceptanceHistory(prior_rate=0.5)
    for _ in range(30):
        h.observe("copying", 4, 0, cls="greedy")
        h.observe("random", 0, 1, cls="t<=1.00")
    assert h.rate("copying") > 0.8 and h.rate("random") < 0.2
    # a new request inherits its class's engine-wide rate, not the other class's
    assert h.rate("new-greedy", "greedy") > 0.8 and h.rate("new-sampled", "t<=1.00") < 0.2
    s = h.scores(["copying", "random"], 4, np.array([4, 2]))
    assert np.all(np.diff(s[0]) < 0) and np.isnan(s[1, 2:]).all()
    h.forget("copying")
    assert len(h) == 1
    h2 = AcceptanceHistory(prior_rate=0.5)
    h2.import_priors(h.export_priors(), cast=str)
    assert abs(h2.global_rate("t<=1.00") - h.global_rate("t<=1.00")) < 1e-3
    h2.import_priors({"x": "garbage", "y": [5, 2]}, cast=str)  # malformed entries are ignored
    assert h2.global_rate("x") == 0.5 and h2.global_rate("y") == 0.5


def test_small_scores_in_plain_python_equal_the_numpy_scores(monkeypatch):
    """Batches up to SMALL_PLAN slots are scored in plain Python (no GIL release on the engine's critical
    path); the scores, and so the plans, are the same bits as the NumPy path's."""
    import specdec_engine.policy.history as H

    rng = np.random.default_rng(3)
    for _ in range(200):
        h = AcceptanceHistory()
        b, k = int(rng.integers(0, 12)), int(rng.integers(1, 9))
        ids = [f"r{i}" for i in range(b)]
        for rid in ids:
            for _ in range(int(rng.integers(0, 5))):
                h.observe(rid, int(rng.integers(0, 5)), int(rng.integers(0, 2)), int(rng.integers(0, 2)))
        avail = rng.integers(0, k + 2, b)
        classes = rng.integers(0, 2, b).tolist()
        small = h.scores(ids, k, avail, classes)
        monkeypatch.setattr(H, "SMALL_PLAN", -1)
        big = h.scores(ids, k, avail, classes)
        monkeypatch.setattr(H, "SMALL_PLAN", 256)
        assert small.shape == big.shape == (b, k)
        np.testing.assert_array_equal(small, big)


def test_position_calibration_learns_runs():
    # acceptance in runs: the deep drafts of a request whose first draft was accepted are accepted too
    cal = Calibration(n_positions=4)
    rng = np.random.default_rng(0)
    for _ in range(400):
        score = rng.uniform(0.3, 0.9)
        run = rng.random() < score
        cum = score ** np.arange(1, 5)
        cal.update(cum, [run] * 4, np.arange(4))
    p = cal(np.array([0.6 ** 4]), np.array([3]))[0]
    assert p > 0.4  # the pooled (independent) reading would say ~0.13
    assert cal.summary()["n_positions"] == 4
