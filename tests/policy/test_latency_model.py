import numpy as np
import pytest

from specdec_engine.policy import LatencyModel, LatencyModelError, fit_segments


def test_reproduces_every_measured_point(h100_model):
    s = h100_model.samples
    pred = np.array([h100_model.predict(int(b), int(n)) for b, n, _ in s])
    np.testing.assert_allclose(pred, s[:, 2], rtol=1e-12)
    assert h100_model.mape() < 1e-9


def test_keeps_a_measured_spike_that_a_fit_would_smooth_away():
    # one sequence count, latency rises slowly but N=288 is a measured spike (+24% vs 256)
    n = np.array([32, 64, 128, 192, 256, 288, 320, 384])
    lat = np.array([1.0, 1.05, 1.15, 1.25, 1.35, 1.674, 1.45, 1.55])
    m = LatencyModel.fit(np.ones_like(n), n, lat)
    assert m.predict(1, 288) == pytest.approx(1.674)
    assert m.predict(1, 288) > m.predict(1, 320)  # not monotone: the measured table wins
    assert m.predict(1, 272) == pytest.approx((1.35 + 1.674) / 2)  # interpolated between neighbours


def test_interpolates_in_batch_and_extrapolates_sensibly(h100_model):
    # at N=256: B=64 verifies 4 tokens each, B=128 two each
    lo, hi = h100_model.predict(64, 256), h100_model.predict(128, 256)
    mid = h100_model.predict(96, 256)
    assert lo < mid < hi
    assert mid == pytest.approx((lo + hi) / 2)
    # beyond the largest batch: grows along the last two batch sizes' per-sequence slope
    assert h100_model.predict(256, 256) > h100_model.predict(128, 256)
    # beyond the measured tokens of a batch: continues along the fitted segments, never below the last point
    assert h100_model.predict(1, 40) >= h100_model.predict(1, 9)


def test_curve_matches_predict(h100_model):
    cur = h100_model.curve(48, 400)
    assert len(cur) > 400
    for n in (48, 100, 257, 400):
        assert cur[n] == pytest.approx(h100_model.predict(48, n))


def test_segments_find_known_jumps():
    n = np.arange(8, 513, 8)
    lat = 1.0 + 0.002 * n + np.where(n >= 256, 0.5, 0.0) + np.where(n >= 400, 0.6, 0.0)
    seg = fit_segments(n, lat, jump_threshold=0.15)
    assert seg.jump_boundaries == [256, 400]
    np.testing.assert_allclose(seg(n), lat, rtol=1e-9)
    # a higher threshold ignores the smaller relative jump (+26% at 400, vs +33% at 256)
    assert fit_segments(n, lat, jump_threshold=0.30).jump_boundaries == [256]


def test_segments_do_not_cut_a_coarse_steady_slope():
    n = np.array([64, 128, 256, 512, 1024])
    lat = 1.0 + 0.01 * n  # +50%..+100% between samples, but perfectly linear
    assert fit_segments(n, lat).jump_boundaries == []


def test_save_load_roundtrip(tmp_path, h100_model):
    p = tmp_path / "latency_model.npz"
    h100_model.save(p)
    m2 = LatencyModel.load(p)
    for b, n in [(1, 1), (3, 20), (128, 1152), (200, 300)]:
        assert m2.predict(b, n) == pytest.approx(h100_model.predict(b, n))
    assert m2.segments.jump_boundaries == h100_model.segments.jump_boundaries


@pytest.mark.parametrize("batch,tokens,lat,msg", [
    ([], [], [], "no latency samples"),
    ([1], [4], [1.0], "at least 2 distinct token counts"),
    ([1, 1], [4, 8], [1.0, float("nan")], "NaN"),
    ([1, 1], [4, 8], [1.0, -2.0], "positive"),
    ([1, 8], [4, 4], [1.0, 2.0], "below batch size"),
])
def test_bad_samples_are_named(batch, tokens, lat, msg):
    with pytest.raises(LatencyModelError, match=msg):
        LatencyModel.fit(batch, tokens, lat)
