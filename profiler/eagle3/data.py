"""Training rows for the local EAGLE-3 trainer.

Two sources, both ending as fixed-length token rows ``[N, seq_len + 1]``:

- a SpecForge corpus JSONL (``{"id", "conversations": [{"role","content"}]}``,
  the format ``specdec corpus`` writes), rendered through the target
  tokenizer's chat template and packed into rows;
- the tiny target's own sample stream (``tiny_model.build_samples``).

Why regeneration: EAGLE heads are trained to predict the *target's* next
token, and in serving the draft's input tokens are the target's own choices.
Teacher forcing on corpus text conditions the head on tokens the target
would not have produced. SpecForge's answer is regenerating the responses
with the target (``regenerate_train_data.py``); here ``regenerate_rows``
keeps a prompt prefix of every row and lets the target write the rest
(greedy for half the rows, temperature sampling for the other half), which on
a tiny target costs seconds. The labels are the target's own logits anyway
(distillation), so regeneration only changes which contexts are trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import UsageError


def read_corpus(path: Path) -> list[list[dict]]:
    """Conversations from a SpecForge JSONL; a bad line is a UsageError naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--corpus {path}: no such file")
    convs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as err:
                raise UsageError(f"{path}:{n}: not a JSON object ({err.args[0] if err.args else err})") from None
            conv = rec.get("conversations") if isinstance(rec, dict) else None
            if not isinstance(conv, list) or not conv:
                raise UsageError(f"{path}:{n}: expected {{\"id\", \"conversations\": [{{\"role\", \"content\"}}]}}, "
                                 f"'conversations' missing or empty")
            for j, turn in enumerate(conv):
                if not (isinstance(turn, dict) and isinstance(turn.get("role"), str)
                        and isinstance(turn.get("content"), str)):
                    raise UsageError(f"{path}:{n}: conversations[{j}] needs string 'role' and 'content'")
            convs.append(conv)
    if not convs:
        raise UsageError(f"--corpus {path}: no conversations in the file")
    return convs


def corpus_rows(tok, convs: list[list[dict]], seq_len: int) -> torch.Tensor:
    """Render every conversation with the chat template, concatenate, cut into rows of ``seq_len + 1``."""
    stream: list[int] = []
    for conv in convs:
        text = tok.apply_chat_template(conv, tokenize=False)
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise UsageError(f"the corpus renders to {len(stream)} tokens, fewer than one row of {seq_len + 1}; "
                         f"add conversations or lower --seq-len")
    return torch.tensor(stream[:n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


@torch.no_grad()
def regenerate_rows(model, rows: torch.Tensor, seed: int, batch: int = 256, min_prompt: int = 8,
                    max_prompt: int = 48, temperature: float = 0.8, log=None) -> torch.Tensor:
    """Keep a prompt prefix of each row, let the target write the rest (see the module docstring)."""
    n, length = rows.shape
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = rows.clone()
    for bi, start in enumerate(range(0, n, batch)):
        chunk = rows[start:start + batch]
        plen = rng.randint(min_prompt, min(max_prompt, length - 1))
        sample = bi % 2 == 1
        ids = chunk[:, :plen]
        past = None
        cur = ids
        for _ in range(length - plen):
            o = model(input_ids=cur, past_key_values=past, use_cache=True)
            past = o.past_key_values
            logits = o.logits[:, -1].float()
            if sample:
                nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            cur = nxt
        out[start:start + batch] = ids
        if log:
            log(f"  regenerated {min(start + batch, n)}/{n} rows")
    return out


def select_draft_vocab(rows: torch.Tensor, vocab: int, draft_vocab: int) -> torch.Tensor:
    """The ``draft_vocab`` most frequent target ids in the rows (ties by id), sorted ascending (SpecForge's rule)."""
    counts = torch.bincount(rows.flatten(), minlength=vocab).to(torch.float64)
    counts += torch.arange(vocab, 0, -1, dtype=torch.float64) * 1e-9  # deterministic tie-break: lower id first
    top = counts.topk(min(draft_vocab, vocab)).indices
    return top.sort().values
