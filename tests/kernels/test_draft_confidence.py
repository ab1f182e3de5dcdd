import numpy as np
import pytest
import torch

from specdec_kernels import draft_confidence, draft_confidence_torch


def _ref64(logits: torch.Tensor, t: float):
    x = logits.double() / t
    ids = x.argmax(-1)
    lse = torch.logsumexp(x, -1)
    p = torch.exp(x - lse[:, None])
    ent = -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)
    return ids, p.max(-1).values, lse, ent


def _logits(rows, vocab, dtype, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("rows,vocab", [(1, 7), (3, 1000), (5, 4097), (2, 50000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_twin_matches_float64_reference(rows, vocab, dtype):
    x = _logits(rows, vocab, dtype, seed=rows * vocab)
    for t in (1.0, 0.7):
        ids, prob, lse, ent = draft_confidence_torch(x, t, return_entropy=True)
        rid, rprob, rlse, rent = _ref64(x, t)
        assert torch.equal(ids, rid)
        torch.testing.assert_close(prob.double(), rprob, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse.double(), rlse, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent.double(), rent, rtol=1e-4, atol=1e-4)


def test_edge_rows_are_defined():
    x = torch.full((4, 300), float("-inf"))
    x[1, 17] = 2.0                       # a single finite entry
    x[2, :] = 1.0                        # all equal: first index wins
    x[3, 5], x[3, 250] = 3.0, 3.0        # tie between two maxima
    ids, prob, lse, ent = draft_confidence_torch(x, return_entropy=True)
    assert ids.tolist() == [0, 17, 0, 5]
    assert prob[0] == 0 and torch.isneginf(lse[0]) and ent[0] == 0          # all -inf: defined, no NaN
    assert prob[1] == 1 and ent[1] == 0
    assert prob[2] == pytest.approx(1 / 300) and ent[2] == pytest.approx(np.log(300), rel=1e-5)
    assert not torch.isnan(torch.stack([prob, ent])).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [1.0, 0.7])
def test_serving_path_without_entropy_gives_the_same_outputs(dtype, t):
    """The drafter calls the twin without entropy on every draft step (a shorter path): same ids, probabilities
    and logsumexp as the full path, edge rows included."""
    x = _logits(6, 300, dtype, seed=3)
    x[0, :] = float("-inf")
    x[1, :] = float("-inf")
    x[1, 17] = 2.0
    x[2, 5], x[2, 250] = 30.0, 30.0
    full = draft_confidence_torch(x, t, return_entropy=True)[:3]
    short = draft_confidence_torch(x, t)
    assert torch.equal(short[0], full[0])
    torch.testing.assert_close(short[1], full[1], rtol=0, atol=0)
    torch.testing.assert_close(short[2], full[2], rtol=0, atol=0)
    assert short[1][0] == 0 and not torch.isnan(short[1]).any()


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        draft_confidence(torch.zeros(2, 3), temperature=0)
    with pytest.raises(ValueError, match=r"\[rows, vocab\]"):
        draft_confidence(torch.zeros(3))
    with pytest.raises(ValueError, match="dtype"):
        draft_confidence(torch.zeros(2, 3, dtype=torch.int32))
