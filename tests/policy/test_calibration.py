import numpy as np
import pytest

from specdec_engine.policy import Calibration, CalibrationError


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    p_true = score ** 2.5  # an over-confident drafter
    return score, (rng.random(n) < p_true).astype(float), p_true


def test_learns_an_overconfident_drafter_and_beats_raw_confidence():
    cal = Calibration()
    s, a, _ = _pairs(20000)
    for i in range(0, len(s), 500):  # online, in chunks, like engine steps
        cal.update(s[i:i + 500], a[i:i + 500])
    xs = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(cal(xs), xs ** 2.5, atol=0.05)
    summ = cal.summary()
    assert summ["ece"] < 0.02
    assert summ["ece_prequential"] < summ["ece_raw"] / 3  # honest out-of-sample error, much better than raw


def test_is_monotone_even_on_adversarial_data():
    cal = Calibration(n_bins=10)
    rng = np.random.default_rng(1)
    s = rng.random(5000)
    a = (rng.random(5000) < 0.5 + 0.4 * np.sin(12 * s)).astype(float)  # wiggly truth
    cal.update(s, a)
    assert np.all(np.diff(cal.p_accept) >= -1e-12)
    out = cal(np.linspace(1, 0, 50))  # a non-increasing sequence stays non-increasing
    assert np.all(np.diff(out) <= 1e-12)


def test_prior_governs_until_data_arrives():
    cal = Calibration(prior=lambda c: np.full_like(c, 0.3), prior_strength=10)
    np.testing.assert_allclose(cal([0.1, 0.9]), [0.3, 0.3])
    cal.update(np.full(1000, 0.9), np.ones(1000))
    assert cal([0.95])[0] > 0.95


def test_save_load_roundtrip(tmp_path):
    cal = Calibration()
    s, a, _ = _pairs(3000, seed=3)
    cal.update(s, a)
    p = tmp_path / "calibration.npz"
    cal.save(p)
    cal2 = Calibration.load(p)
    np.testing.assert_allclose(cal2(np.linspace(0, 1, 33)), cal(np.linspace(0, 1, 33)))
    assert cal2.summary() == cal.summary()
    with np.load(p) as z:
        for field in ("bin_edges", "scores", "p_accept", "ece"):  # the DESIGN's cache fields
            assert field in z.files


def test_bad_input_is_named(tmp_path):
    cal = Calibration()
    with pytest.raises(CalibrationError, match="differ in length"):
        cal.update([0.1, 0.2], [1])
    with pytest.raises(CalibrationError, match="finite"):
        cal.update([float("nan")], [1])
    p = tmp_path / "bad.npz"
    arrs = cal.to_arrays()
    arrs["accepted"] = arrs["counts"] + 5
    np.savez(p, **arrs)
    with pytest.raises(CalibrationError, match="more accepted"):
        Calibration.load(p)


def test_serving_path_refits_in_batches_reports_are_current():
    """Once warm, the per-step lookup refits after REFIT_MIN_PAIRS new pairs (cost); reports see every pair."""
    cal = Calibration(n_bins=10, prior_strength=1.0)
    cal.REFIT_MAX_AGE_S = 1e9
    cal.update(np.full(cal.REFIT_WARM_PAIRS, 0.5), np.ones(cal.REFIT_WARM_PAIRS) * (np.arange(1000) % 2))
    cal.refit()
    before = float(cal([0.95])[0])
    cal.update(np.full(8, 0.95), np.zeros(8))          # a few pairs: the served map lags
    assert float(cal([0.95])[0]) == before
    assert cal.p_accept[0, -1] < 0.5                    # the report does not
    cal.update(np.full(cal.REFIT_MIN_PAIRS, 0.95), np.zeros(cal.REFIT_MIN_PAIRS))
    assert float(cal([0.95])[0]) < 0.5                  # enough new pairs: the served map follows
    cal.update(np.full(4, 0.05), np.ones(4))
    cal.refit()
    assert float(cal([0.05])[0]) == pytest.approx(cal.p_accept[0, 0], abs=0.05)


def test_all_maps_fit_at_once_as_pool_adjacent_violators_fits_each():
    """The vectorised isotonic fit (every map of a refit in one pass, off the step path) gives what the
    pool-adjacent-violators loop gives, map by map, on random and already-monotone rows."""
    from specdec_engine.policy.calibration import isotonic_increasing, isotonic_increasing_rows

    rng = np.random.default_rng(0)
    for trial in range(200):
        rows, bins = int(rng.integers(1, 30)), int(rng.integers(2, 25))
        v = rng.random((rows, bins))
        if trial % 3 == 0:
            v = np.sort(v, axis=1)
        w = rng.random((rows, bins)) * 100 + 0.01
        expected = np.array([isotonic_increasing(a, b) for a, b in zip(v, w)])
        np.testing.assert_allclose(isotonic_increasing_rows(v, w), expected, rtol=0, atol=1e-11)


def test_a_refit_keeps_the_lookup_table_on_the_maps_between_bin_centres():
    cal = Calibration(n_bins=20, n_positions=3)
    rng = np.random.default_rng(1)
    cal.update(rng.random(3000), rng.random(3000) < 0.6, rng.integers(0, 3, 3000))
    cal.refit()
    grid = np.linspace(0.0, 1.0, cal.TABLE + 1)
    for pos in range(3):
        np.testing.assert_allclose(cal(grid, np.full(grid.shape, pos)), np.interp(grid, cal.centers, cal.p_accept[pos]),
                                   rtol=0, atol=1e-12)


def test_a_few_scores_calibrate_in_plain_python_to_the_same_values():
    """The serving path's small lookup (no GIL release, see selector.SMALL_PLAN) equals the NumPy lookup."""
    cal = Calibration(n_bins=20, n_positions=6)
    rng = np.random.default_rng(3)
    cal.update(rng.random(4000), rng.random(4000) < 0.55, rng.integers(0, 6, 4000))
    for _ in range(50):
        raw = rng.random((5, 7))
        raw[rng.random(raw.shape) < 0.2] = np.nan
        raw[0, :3] = [0.0, 1.0, 0.5 / cal.TABLE]  # bounds and a tie for rounding (half to even)
        pos = rng.integers(-1, 8, raw.shape)  # out-of-range positions clamp, as in __call__
        expected = np.where(np.isnan(raw), np.nan, cal(np.nan_to_num(raw), pos))
        np.testing.assert_array_equal(cal.calibrate_small(raw, pos), expected)
