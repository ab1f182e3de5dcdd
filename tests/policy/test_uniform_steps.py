"""Uniform against ragged K (issue 3, GPU): vLLM replays a FULL CUDA graph only for a decode batch where every
request verifies exactly K_max drafts; every other shape runs PIECEWISE. With the uniform step's measured price
(`KSelector.set_uniform_steps`) the selector weighs "K_max for everyone" against its best ragged plan."""

import numpy as np
import pytest

from specdec_engine.policy import KSelector, LatencyModel

K = 4


def _ragged(b=4, per_token=0.05):
    """PIECEWISE steps: 1 ms + 0.05 ms per token for batch sizes 1..8."""
    pts = [(bb, n, 1.0 + per_token * n) for bb in range(1, 9) for n in range(bb, bb * (K + 1) + 1)]
    return LatencyModel.from_samples(pts)


def _conf(B, p):
    return np.full((B, K), p) ** np.arange(1, K + 1)


def test_a_cheap_uniform_step_turns_a_ragged_plan_into_k_max_for_everyone():
    sel = KSelector(_ragged(), K)
    mixed = np.vstack([_conf(2, 0.9), _conf(2, 0.45)])  # confident and doubtful requests
    ragged = sel.select(mixed)
    assert sorted(ragged.k.tolist()) != [K] * 4  # ragged: doubtful requests draft less
    sel.set_uniform_steps([1, 2, 4, 8], [0.9, 1.0, 1.2, 1.6])  # FULL graph: far cheaper than 1 + 0.05 * 20 ms
    uni = sel.select(mixed)
    assert uni.k.tolist() == [K] * 4 and uni.num_tokens == 4 * (K + 1)
    assert uni.predicted_ms == pytest.approx(1.2) and uni.goodput > ragged.goodput
    assert uni.baseline_goodput == ragged.baseline_goodput  # K=0 for everyone is not uniform: still PIECEWISE


def test_a_uniform_price_no_better_than_ragged_changes_nothing():
    base = KSelector(_ragged(), K)
    same = KSelector(_ragged(), K)
    same.set_uniform_steps([1, 8], [1.0 + 0.05 * 1 * (K + 1), 1.0 + 0.05 * 8 * (K + 1)])  # exactly the ragged price
    rng = np.random.default_rng(0)
    for _ in range(50):
        B = int(rng.integers(1, 9))
        c = np.cumprod(rng.uniform(0.1, 0.99, (B, K)), axis=1)
        a, b = base.select(c), same.select(c)
        assert b.goodput == pytest.approx(a.goodput, rel=1e-12) or b.goodput > a.goodput


def test_doubtful_drafts_stay_off_even_at_the_uniform_price():
    sel = KSelector(_ragged(per_token=0.2), K)
    sel.set_uniform_steps([1, 8], [1.5, 4.0])
    out = sel.select(_conf(4, 0.05))
    assert out.k.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("case", ["missing_draft", "capped", "prefill_in_batch", "outside_profiled_batches",
                                  "shorter_drafts"])
def test_no_uniform_option_where_vllm_would_not_run_a_full_graph(case):
    sel = KSelector(_ragged(), K)
    sel.set_uniform_steps([2, 4], [0.5, 0.6])  # absurdly cheap: taken wherever it applies
    c = _conf(4, 0.6)
    kw = {}
    if case == "missing_draft":
        c[1, 2:] = np.nan  # prompt lookup found only 2 drafts for request 1
    elif case == "capped":
        kw["n_avail"] = np.array([K, K, 1, K])  # request 2 is one token from its max_tokens
    elif case == "prefill_in_batch":
        kw.update(extra_tokens=64, extra_seqs=1)
    elif case == "outside_profiled_batches":
        c = _conf(6, 0.6)
    elif case == "shorter_drafts":
        c = c[:, :2]  # the drafter proposed 2 of K_max
    out = sel.select(c, **kw)
    assert out.predicted_ms > 1.0  # priced by the ragged (PIECEWISE) table, whatever K it chose


def test_uniform_table_interpolates_and_rejects_bad_input():
    sel = KSelector(_ragged(), K)
    assert sel.uniform_forward_ms(4) is None
    sel.set_uniform_steps([8, 2], [2.0, 1.0])
    assert sel.uniform_forward_ms(2) == 1.0 and sel.uniform_forward_ms(5) == pytest.approx(1.5)
    assert sel.uniform_forward_ms(1) is None and sel.uniform_forward_ms(9) is None
    for b, ms in (([0], [1.0]), ([2, 2], [1.0, 1.1]), ([2], [0.0]), ([2], [float("nan")]), ([2, 4], [1.0])):
        with pytest.raises(ValueError, match="uniform steps"):
            sel.set_uniform_steps(b, ms)
    sel.set_uniform_steps(None, None)
    assert sel.uniform_forward_ms(2) is None


def test_large_batches_price_the_uniform_plan_as_small_ones_do():
    """Above SMALL_PLAN draft slots the uniform plan is summed with NumPy, below in plain Python: same plan."""
    from specdec_engine.policy import selector as S

    pts = [(b, n, 1.0 + 0.05 * n) for b in (1, 128) for n in range(b, b * (K + 1) + 1, max(1, b // 4))]
    sel = KSelector(LatencyModel.from_samples(pts), K)
    sel.set_uniform_steps([1, 128], [0.9, 5.0])
    rng = np.random.default_rng(1)
    for B in (3, 70, 100):  # 12, 280 and 400 draft slots
        c = np.cumprod(rng.uniform(0.5, 0.99, (B, K)), axis=1)
        big = sel.select(c)
        old, S.SMALL_PLAN = S.SMALL_PLAN, 10 ** 6
        try:
            small = sel.select(c)
        finally:
            S.SMALL_PLAN = old
        assert big.k.tolist() == small.k.tolist() and big.expected_tokens == pytest.approx(small.expected_tokens)
