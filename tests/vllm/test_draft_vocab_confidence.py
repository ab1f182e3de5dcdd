"""Model drafters with a smaller draft vocabulary (EAGLE-3 + d2t): confidence over the head's own logits.

The wrapper of vLLM's ``_greedy_sample`` (draft_confidence.py) must give the very ids vLLM's
``compute_logits`` (scatter into a target-vocabulary row of -inf) + argmax gives, and the same confidences.
A stand-in head with vLLM's ``compute_logits`` arithmetic (llama_eagle3.py) is enough: no engine needed.
"""
import types

import pytest
import torch

from specdec_engine.vllm import draft_confidence as dc


class _Head(torch.nn.Module):
    def __init__(self, d2t, target_vocab, hidden=8):
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden, len(d2t), bias=False)
        self.draft_id_to_target_id = torch.nn.Parameter(torch.as_tensor(d2t), requires_grad=False)
        self.target_vocab = target_vocab
        self.logits_processor = lambda lm_head, h: lm_head(h)

    def compute_logits(self, h):  # vLLM's Eagle3LlamaForCausalLM.compute_logits, shape for shape
        logits = self.logits_processor(self.lm_head, h)
        targets = torch.arange(logits.shape[1]) + self.draft_id_to_target_id
        out = logits.new_full((logits.shape[0], self.target_vocab), float("-inf"))
        out[:, targets] = logits
        return out


def _proposer(head):
    p = types.SimpleNamespace(model=head, use_local_argmax_reduction=False, use_heterogeneous_vocab=False,
                              vllm_config=types.SimpleNamespace(additional_config={"tilespec": {}}))
    setattr(p, dc._STEPS, [])
    return p


def test_ids_and_confidences_match_the_full_vocabulary_path():
    torch.manual_seed(0)
    ids = torch.sort(torch.randperm(64)[:16]).values  # 16 draft ids among 64 target ids, increasing
    head = _Head(ids - torch.arange(16), 64)
    wrapped = dc.make_greedy_sample_wrapper(lambda self, h: self.model.compute_logits(h).argmax(dim=-1))
    h = torch.randn(32, 8)
    h[5] = h[4]  # repeated rows, and a row of exact ties below
    head.lm_head.weight.data[3] = head.lm_head.weight.data[7]
    p = _proposer(head)
    got = wrapped(p, h)
    assert dc._draft_to_target(head) is not None  # the draft-vocabulary path was taken
    full = head.compute_logits(h)
    assert torch.equal(got, full.argmax(dim=-1))
    torch.testing.assert_close(getattr(p, dc._STEPS)[0], torch.softmax(full, dim=-1).max(dim=-1).values)


def test_a_map_that_is_not_increasing_takes_the_full_vocabulary_path():
    head = _Head(torch.tensor([5, 0, 2, 0]), 10)  # targets 5, 1, 4, 3: not increasing
    assert dc._draft_to_target(head) is None
    wrapped = dc.make_greedy_sample_wrapper(lambda self, h: self.model.compute_logits(h).argmax(dim=-1))
    h = torch.randn(6, 8)
    assert torch.equal(wrapped(_proposer(head), h), head.compute_logits(h).argmax(dim=-1))


@pytest.mark.parametrize("attr", ["draft_id_to_target_id", "logits_processor"])
def test_a_head_without_the_pieces_takes_the_full_vocabulary_path(attr):
    head = _Head(torch.zeros(4, dtype=torch.long), 4)
    if attr == "draft_id_to_target_id":
        head.draft_id_to_target_id = None
    else:
        del head.logits_processor
    assert dc._draft_to_target(head) is None
