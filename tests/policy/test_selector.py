import itertools

import numpy as np
import pytest

from specdec_engine.policy import KSelector, LatencyModel


def _flat_then_jump(jump_at=16, size=64, base=1.0, slope=0.01, jump=0.5):
    n = np.arange(1, size + 1)
    lat = base + slope * n + np.where(n >= jump_at, jump, 0.0)
    return LatencyModel.fit(np.ones_like(n), n, lat)


def _goodput(model, cum_p, k, extra_tokens=0):
    B = len(k)
    exp = B + sum(cum_p[r, :k[r]].sum() for r in range(B))
    return exp / model.predict(B, extra_tokens + B + int(sum(k)))


def test_selection_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(40):
        B, K = 3, 3
        n = np.arange(B, B * (K + 1) + 1)
        lat = 1 + 0.05 * n + rng.uniform(0, 0.3, len(n))  # bumpy, non-monotone latency
        model = LatencyModel.fit(np.full_like(n, B), n, lat)
        p = np.cumprod(rng.uniform(0.2, 0.95, (B, K)), axis=1)
        sel = KSelector(model, K).select(p)
        best = max(_goodput(model, p, ks) for ks in itertools.product(range(K + 1), repeat=B))
        assert _goodput(model, p, sel.k) == pytest.approx(best, rel=1e-9), trial
        assert sel.goodput == pytest.approx(best, rel=1e-9)


def test_stops_on_the_cheap_side_of_a_jump():
    model = _flat_then_jump(jump_at=16)
    p = np.full((3, 8), 0.9) ** np.arange(1, 9)  # 3 confident requests would like 8 drafts each (27 tokens)
    sel = KSelector(model, 8).select(p)
    assert sel.num_tokens == 15  # 3 + 12 drafts: the last total below the jump at 16
    assert sel.k.sum() == 12 and set(sel.k) <= {4}


def test_per_request_k_follows_confidence():
    n = np.arange(1, 200)
    model = LatencyModel.fit(np.full_like(n, 1), n, 1.0 + 0.2 * n)  # every token costs 20% of a step
    p = np.stack([np.full(8, 0.95) ** np.arange(1, 9), np.full(8, 0.3) ** np.arange(1, 9)])
    sel = KSelector(model, 8).select(p)
    assert sel.k[0] > sel.k[1]
    assert sel.k[1] == 0


def test_prefix_order_and_caps():
    model = _flat_then_jump(jump_at=1000, slope=0.0001)
    p = np.array([[0.9, 0.95, 0.99, 0.2]])  # not monotone on input: treated as prefix probabilities
    sel = KSelector(model, 4).select(p)
    assert sel.k.tolist() == [4]
    sel = KSelector(model, 4).select(p, n_avail=np.array([2]))
    assert sel.k.tolist() == [2]
    q = np.array([[0.9, np.nan, np.nan, np.nan], [0.8, 0.7, 0.6, 0.5]])
    assert KSelector(model, 4).select(q).k.tolist() == [1, 4]


def test_deterministic_and_handles_empty_batch(h100_model):
    rng = np.random.default_rng(5)
    p = np.cumprod(rng.uniform(0.3, 0.99, (64, 8)), axis=1)
    sel = KSelector(h100_model, 8)
    a, b = sel.select(p), sel.select(p.copy())
    assert a.k.tolist() == b.k.tolist()
    empty = sel.select(np.zeros((0, 8)))
    assert empty.k.size == 0


def test_no_speculation_when_it_does_not_pay(h100_model):
    p = np.full((128, 8), 0.01) ** np.arange(1, 9)
    sel = KSelector(h100_model, 8).select(p)
    assert sel.k.sum() == 0 and sel.gain == pytest.approx(1.0)


def test_force_rows_verifies_a_first_draft(h100_model):
    p = np.full((128, 8), 0.01) ** np.arange(1, 9)
    force = np.zeros(128, bool)
    force[:5] = True
    sel = KSelector(h100_model, 8).select(p, force_rows=force)
    assert sel.k[:5].tolist() == [1] * 5 and sel.k[5:].sum() == 0


def test_drafter_cost_by_longest_draft_shortens_drafts(h100_model):
    rng = np.random.default_rng(2)
    p = np.cumprod(rng.uniform(0.6, 0.95, (16, 8)), axis=1)
    free = KSelector(h100_model, 8).select(p)
    costly = KSelector(h100_model, 8, draft_cost_ms=[0.0] + [0.15 * k for k in range(1, 9)]).select(p)
    assert costly.k.max() < free.k.max()
    assert costly.predicted_ms >= h100_model.predict(16, costly.num_tokens)


def test_token_padding_uses_padded_latency():
    n = np.arange(1, 65)
    model = LatencyModel.fit(np.ones_like(n), n, 1.0 + 0.05 * n)
    p = np.full((1, 8), 0.97) ** np.arange(1, 9)
    assert KSelector(model, 8).select(p).num_tokens == 9  # unpadded: every draft is worth its 5%
    sel = KSelector(model, 8, token_padding=[1, 2, 4, 8, 16]).select(p)
    # padded: 9 tokens would run as 16, so the last draft is not worth it; 8 tokens run as 8
    assert sel.num_tokens == 8 and sel.predicted_ms == pytest.approx(model.predict(1, 8))


def test_bad_arguments():
    model = _flat_then_jump()
    with pytest.raises(ValueError, match="k_max"):
        KSelector(model, 0)
    with pytest.raises(ValueError, match="draft_cost_ms"):
        KSelector(model, 4, draft_cost_ms=[1, 2])
    with pytest.raises(ValueError, match="shape"):
        KSelector(model, 4).select(np.zeros((2, 5)))


def test_small_plans_in_plain_python_choose_what_numpy_chooses(monkeypatch):
    """Plans up to SMALL_PLAN draft slots run in plain Python (no call that releases the GIL, see SMALL_PLAN);
    they must be the NumPy path's plans bit for bit: same K per request, tokens, expected tokens and times."""
    from specdec_engine.policy import selector as S

    rng = np.random.default_rng(7)
    lat = LatencyModel.from_samples([(b, n, 2.0 + 0.013 * n + 0.07 * b + (0.9 if n > 40 else 0.0))
                                     for b in (1, 2, 4, 8, 16, 32) for n in range(b, 9 * b + 1)])
    for trial in range(400):
        B, K = int(rng.integers(1, 13)), int(rng.integers(1, 9))
        if B * K > S.SMALL_PLAN:
            continue
        sel = KSelector(lat, K, draft_cost_ms=float(rng.choice([0.0, 0.3])),
                        token_padding=[1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192] if trial % 3 == 0 else None,
                        min_gain=float(rng.choice([0.0, 0.05])))
        sel.overhead_ms, sel.per_draft_ms = float(rng.choice([0.0, 1.7])), float(rng.choice([0.0, 0.04]))
        p = np.cumprod(rng.uniform(0.2, 1.0, (B, K)), axis=1)
        p[rng.random((B, K)) < 0.1] = np.nan
        if trial % 5 == 0:
            p[:, 0] = rng.choice([0.0, 1.0, 0.5], B)  # exact ties and bounds
        n_avail = rng.integers(0, K + 1, B) if trial % 2 else None
        force = rng.random(B) < 0.3 if trial % 4 == 0 else None
        kw = dict(extra_tokens=int(rng.integers(0, 20)), extra_seqs=int(rng.integers(0, 3)),
                  extra_outputs=int(rng.integers(0, 3)), rate=None if trial % 3 == 1 else float(rng.uniform(0.2, 3)))
        small = sel.select(p, n_avail, force_rows=force, **kw)
        monkeypatch.setattr(S, "SMALL_PLAN", 0)
        big = sel.select(p, n_avail, force_rows=force, **kw)
        monkeypatch.setattr(S, "SMALL_PLAN", 64)
        assert small.k.tolist() == big.k.tolist(), trial
        assert (small.num_tokens, small.expected_tokens, small.predicted_ms, small.goodput, small.baseline_goodput) \
            == (big.num_tokens, big.expected_tokens, big.predicted_ms, big.goodput, big.baseline_goodput), trial
