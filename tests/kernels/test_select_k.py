"""The GPU selector (kernel and twin) returns what the policy core's CPU selector returns."""

import numpy as np
import pytest
import torch

from specdec_engine.policy import KSelector, LatencyModel
from specdec_kernels import select_k_torch


def _model(seed):
    rng = np.random.default_rng(seed)
    n = np.arange(1, 300)
    lat = 1.0 + 0.01 * n + rng.uniform(0, 0.15, n.size) + np.where(n > 120, 0.3, 0)  # bumpy, with a jump
    return LatencyModel.fit(np.ones_like(n), n, lat)


def _case(rng, B, K):
    p = np.cumprod(rng.uniform(0.2, 1.0, (B, K)), axis=1).astype(np.float32)
    p[rng.random((B, K)) < 0.1] = np.nan          # missing drafts
    n_avail = rng.integers(0, K + 1, B)
    return p, n_avail


def _cpu(sel, p, n_avail, extra, rate, cost):
    s = sel.select(p.astype(np.float64), n_avail, extra_tokens=extra, rate=rate)
    return s


def _gpu_inputs(sel, p, n_avail, extra):
    B, K = p.shape
    base = extra + B
    table = torch.from_numpy(sel.latency_table(B, base + B * K, base))
    return torch.from_numpy(p), table, base, torch.from_numpy(n_avail.astype(np.int32))


@pytest.mark.parametrize("with_rate", [False, True])
def test_twin_equals_cpu_selector(with_rate):
    rng = np.random.default_rng(1)
    for case in range(300):
        B, K = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        model = _model(case % 5)
        cost = float(rng.choice([0.0, 0.05]))
        sel = KSelector(model, K, draft_cost_ms=cost)
        sel.overhead_ms, sel.per_draft_ms = float(rng.uniform(0, 2)), float(rng.choice([0.0, 0.01]))
        p, na = _case(rng, B, K)
        extra = int(rng.integers(0, 20))
        rate = float(rng.uniform(0.5, 3.0)) if with_rate else None
        want = _cpu(sel, p, na, extra, rate, cost)
        cc, table, base, nat = _gpu_inputs(sel, p, na, extra)
        k, info = select_k_torch(cc, table, base, nat, draft_cost=cost, rate=float("nan") if rate is None else rate)
        assert k.tolist() == want.k.tolist(), case
        assert info[1].item() == pytest.approx(want.expected_tokens) and info[2].item() == pytest.approx(
            want.predicted_ms)


def test_bad_input():
    with pytest.raises(ValueError, match="cover"):
        select_k_torch(torch.zeros(2, 3), torch.zeros(4), base=2)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        select_k_torch(torch.zeros(3), torch.zeros(40), base=2)
