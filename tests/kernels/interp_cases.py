"""Triton kernels vs their torch twins, run by Triton's interpreter (CPU).

Not collected by pytest directly (no ``test_`` prefix): ``test_triton_interpreter.py``
runs this file in a subprocess with ``TRITON_INTERPRET=1`` set before Triton is
first imported. Triton decides interpreted-or-compiled when each ``@triton.jit``
function is decorated, its own ``tl.argmax``/``tl.zeros`` included, so setting the
variable later in a process that already imported Triton does not work, and
setting it for the whole test session would leak into the engine subprocesses.
"""

import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1" or "triton" in sys.modules:
    raise RuntimeError("run through tests/kernels/test_triton_interpreter.py (needs TRITON_INTERPRET=1 before triton)")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from specdec_engine.policy import KSelector  # noqa: E402
from specdec_kernels import confidence, select  # noqa: E402
from specdec_kernels import draft_confidence_torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_draft_confidence import _logits  # noqa: E402
from test_select_k import _case, _cpu, _gpu_inputs, _model  # noqa: E402


@pytest.mark.parametrize("rows,vocab,splits", [(1, 1, 1), (2, 37, 1), (3, 1000, 3), (4, 2500, 4), (1, 5000, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["lanes", "blocks"])
def test_triton_kernel_matches_twin_in_the_interpreter(rows, vocab, splits, dtype, variant):
    conf = confidence
    for seed in range(2):  # fresh inputs each time
        x = _logits(rows, vocab, dtype, seed=seed + 100 * vocab)
        if vocab > 10:
            x[0, vocab // 3] = float("-inf")  # -inf entries inside a row
        for t in (1.0, 1.3):
            got = conf.draft_confidence_triton(x, t, return_entropy=True, block=256, num_splits=splits,
                                               variant=variant)
            want = draft_confidence_torch(x, t, return_entropy=True)
            assert torch.equal(got[0], want[0])
            for g, w in zip(got[1:], want[1:]):
                torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("variant,per_lane", [("lanes", 1), ("lanes", 4), ("lanes", 8), ("blocks", 1)])
@pytest.mark.parametrize("splits", [1, 3])
def test_triton_kernel_all_neg_inf_rows_and_ties_in_the_interpreter(variant, per_lane, splits):
    conf = confidence
    x = torch.full((5, 700), float("-inf"))
    x[1, 300], x[1, 650] = 1.0, 1.0     # tie across splits: first index
    x[2, 0] = 5.0
    x[3, 100], x[3, 228] = 2.0, 2.0     # tie in one lane (block 128), two iterations apart
    x[4, 300], x[4, 140] = 3.0, 3.0     # tie where the first index sits in a lower lane
    ids, prob, lse, ent = conf.draft_confidence_triton(x, return_entropy=True, block=128, num_splits=splits,
                                                       variant=variant, per_lane=per_lane)
    assert ids.tolist() == [0, 300, 0, 100, 140]
    assert prob[0] == 0 and torch.isneginf(lse[0]) and ent[0] == 0 and prob[2] == 1
    assert prob[1] == pytest.approx(0.5)


def test_triton_kernel_equals_cpu_selector_in_the_interpreter():
    sk = select
    rng = np.random.default_rng(7)
    for case in range(40):
        B, K = int(rng.integers(1, 12)), int(rng.integers(1, 6))
        sel = KSelector(_model(case % 3), K, draft_cost_ms=0.02)
        p, na = _case(rng, B, K)
        extra = int(rng.integers(0, 5))
        rate = None if case % 2 else float(rng.uniform(0.5, 3.0))
        want = _cpu(sel, p, na, extra, rate, 0.02)
        cc, table, base, nat = _gpu_inputs(sel, p, na, extra)
        k, info = sk.select_k_triton(cc, table, base, nat, draft_cost=0.02,
                                     rate=float("nan") if rate is None else rate)
        assert k.tolist() == want.k.tolist(), case
        assert info[1].item() == pytest.approx(want.expected_tokens)
