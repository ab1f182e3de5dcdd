"""The acceptance prior: per-position draft accuracy from a training log, as the policy's raw confidence.

SGLang's adaptive hook gives the policy a batch size before each decode round and the accepted drafts per
request after it, nothing per token. So the raw confidence of draft position i is the same for every
request of a round: the probability that drafts 0..i are all accepted, ``prod(acc_0..acc_i)``, from the
draft's training log (SpecForge and EAGLE trainers log ``acc_0``, ``acc_1``, ... : the accuracy of draft
step i given a correct prefix, i.e. a conditional acceptance). The calibration map of the core then
learns, per position, what that score is really worth on this engine's traffic.

Accepted log shapes (the last record that has ``acc_*`` keys wins; keys may carry a prefix such as
``train/acc_0`` or ``eval/acc_0``, eval preferred):

- a JSON object with ``acc_0``.. keys, or a list ``per_position_acc`` / ``acc``;
- a JSON list of such objects, or JSONL (one object per line).

Engine-agnostic (no SGLang import); it lives beside the SGLang adapter because that adapter is its first
user.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_ACC_KEY = re.compile(r"^(?:(?P<prefix>[A-Za-z_]+)[/.])?acc_(?P<pos>\d+)$")


class TrainingLogError(ValueError):
    """The training log has no per-position accuracy (the message names the file)."""


def _acc_from_record(rec: dict) -> list[float] | None:
    for key in ("per_position_acc", "acc"):
        v = rec.get(key)
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            return [float(x) for x in v]
    found: dict[str, dict[int, float]] = {}
    for k, v in rec.items():
        m = _ACC_KEY.match(str(k))
        if m and isinstance(v, (int, float)) and not isinstance(v, bool):
            found.setdefault(m.group("prefix") or "", {})[int(m.group("pos"))] = float(v)
    if not found:
        return None
    best = next((found[p] for p in ("eval", "test", "val", "", "train") if p in found), next(iter(found.values())))
    out = []
    for i in range(len(best)):
        if i not in best:
            break
        out.append(best[i])
    return out or None


def read_training_log(path: str | Path) -> list[float]:
    """Per-position accuracy [acc_0, acc_1, ...] (each in [0, 1]) from a training log."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise TrainingLogError(f"training_log {p}: cannot read it ({err})") from None
    records: list = []
    try:
        doc = json.loads(text)
        records = doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        for line in text.splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    acc = None
    for rec in records:
        if isinstance(rec, dict):
            acc = _acc_from_record(rec) or acc
    if not acc:
        raise TrainingLogError(f"training_log {p}: no per-position accuracy (acc_0, acc_1, ... or "
                               "'per_position_acc') in any record")
    if any(not 0.0 <= a <= 1.0 for a in acc):
        # some trainers log percentages
        if all(0.0 <= a <= 100.0 for a in acc):
            acc = [a / 100.0 for a in acc]
        else:
            raise TrainingLogError(f"training_log {p}: accuracies outside [0, 1]: {acc}")
    return acc


def per_position(acc: list[float] | float, k_max: int) -> np.ndarray:
    """Conditional acceptance for positions 0..k_max-1 (the last value repeats past the log's depth)."""
    vals = [float(acc)] if np.isscalar(acc) else [float(a) for a in acc]
    out = np.array(vals[:k_max] + [vals[-1]] * max(0, k_max - len(vals)), dtype=np.float64)
    return np.clip(out, 0.0, 1.0)


def cumulative(conditional: np.ndarray) -> np.ndarray:
    """P(drafts 0..i all accepted) = prod(acc_0..acc_i): the raw confidence of position i."""
    return np.cumprod(np.asarray(conditional, dtype=np.float64))
