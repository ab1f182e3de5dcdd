"""Read a draft-training log of either backend into one record: per-position accuracy, loss, samples seen.

Why one record: the tuner and the A/B loop compare runs by the same numbers
(acc_i, simulated acceptance length, loss trend, samples consumed) whoever
trained them, and the non-degenerate-training gate (``trainer.check_gate``)
runs on this record.

Formats understood:

- ours: the ``training_log.json`` the local trainer writes
  (``schema: specdec_eagle3_train_v1``);
- SpecForge tracker metrics as JSON lines (what its trackers receive, e.g. a
  wandb/mlflow history export or a JSONL tracker): dicts with
  ``train/acc_{i}``, ``train/ploss_{i}`` (per logging step), or the per-epoch
  ``train/epoch_acc_{i}`` / ``train/epoch_ploss_{i}`` and older
  ``train/epochacc_{i}`` / ``train/epochploss_{i}``, with the step in
  ``step``/``_step``/``global_step`` when present;
- SpecForge console output: ``Train Epoch [e/E], position i,  Acc: 0.53``,
  ``... position i, pLoss: 2.31`` (also ``Train Step [s]`` and ``Eval``), and
  the tqdm postfix ``N/TOTAL [..., loss=2.13, acc=0.61, ...]`` (mean over
  positions only).

SpecForge logs steps, not samples: ``samples_seen = steps * global_batch``
needs ``global_batch`` (per-device batch x data-parallel ranks x
accumulation), passed by the caller; without it ``samples_seen`` is None.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UsageError

LOG_SCHEMA = "specdec_eagle3_train_v1"  # the local trainer's training_log.json


def simulated_acc_len(acc: list[float]) -> float:
    """``sum_k prod_{i<=k} acc_i``: expected accepted draft tokens per drafting step (no bonus token)."""
    total, run = 0.0, 1.0
    for a in acc:
        run *= a
        total += run
    return total

_ACC_KEY = re.compile(r"^(train|eval)/(?:epoch_?)?acc_?(\d+)$")
_LOSS_KEY = re.compile(r"^(train|eval)/(?:epoch_?)?ploss_?(\d+)$")
_CONSOLE = re.compile(r"(Train|Eval)\s+(Epoch|Step)\s*\[(\d+)(?:/(\d+))?\],\s*position\s+(\d+),\s*"
                      r"(Acc|pLoss):\s*([-+0-9.eE]+|nan|inf)", re.I)
_TQDM = re.compile(r"(\d+)/(\d+)\s*\[[^\]]*?loss=([-+0-9.eE]+|nan),\s*acc=([-+0-9.eE]+|nan)")


def _record(backend, steps, losses, acc, ploss, global_batch, fmt, acc_mean=None) -> dict:
    losses = [x for x in losses if x is not None]
    n = max(1, min(10, len(losses) // 10 or 1))
    rec = {
        "backend": backend, "format": fmt, "steps": steps,
        "samples_seen": steps * global_batch if (steps is not None and global_batch) else None,
        "loss_first": round(sum(losses[:n]) / n, 4) if losses else None,
        "loss_last": round(sum(losses[-n:]) / n, 4) if losses else None,
        "loss_curve": losses, "acc": acc, "ploss": ploss,
        "acc_mean": acc_mean if acc_mean is not None else (round(sum(acc) / len(acc), 4) if acc else None),
        "simulated_acc_len": round(simulated_acc_len(acc), 4) if acc else None,
    }
    rec["simulated_acceptance_length"] = round(1 + rec["simulated_acc_len"], 4) if acc else None
    return rec


def _ours(d: dict) -> dict:
    hist = d.get("history") or []
    rec = _record("local", d.get("steps"), [h["loss"] for h in hist], d.get("acc") or [],
                  (d.get("eval") or {}).get("ploss"), d.get("config", {}).get("batch"), "specdec-json")
    rec.update({"samples_seen": d.get("samples_seen"), "loss_first": d.get("loss_first"),
                "loss_last": d.get("loss_last"), "chance": d.get("chance"), "draft_vocab": d.get("draft_vocab"),
                "train_acc_last": hist[-1]["acc"] if hist else None})
    return rec


def _per_position(values: dict[int, float]) -> list[float]:
    return [values[i] for i in sorted(values)] if values and sorted(values) == list(range(len(values))) else []


def _tracker_lines(dicts: list[dict], global_batch) -> dict:
    losses, last_acc, last_loss, step = [], {}, {}, None
    eval_acc: dict[int, float] = {}
    for n, d in enumerate(dicts, 1):
        acc, pl = {}, {}
        for k, v in d.items():
            m = _ACC_KEY.match(k)
            if m and isinstance(v, (int, float)):
                (acc if m.group(1) == "train" else eval_acc)[int(m.group(2))] = float(v)
                continue
            m = _LOSS_KEY.match(k)
            if m and m.group(1) == "train" and isinstance(v, (int, float)):
                pl[int(m.group(2))] = float(v)
        for key in ("step", "_step", "global_step"):
            if isinstance(d.get(key), int):
                step = d[key]
                break
        else:
            if acc or pl:
                step = (step or 0) + 1
        if pl:
            losses.append(round(sum(pl.values()) / len(pl), 4))
            last_loss = pl
        if acc:
            last_acc = acc
    acc_list = _per_position(eval_acc) or _per_position(last_acc)
    return _record("specforge", step, losses, acc_list, _per_position(last_loss) or None, global_batch,
                   "specforge-tracker-jsonl")


def _console(text: str, global_batch) -> dict:
    acc: dict[int, float] = {}
    eval_acc: dict[int, float] = {}
    ploss: dict[int, float] = {}
    losses: list[float] = []
    step = None
    cur_key = None
    cur_losses: dict[int, float] = {}
    tq_last = None
    for m in _CONSOLE.finditer(text):
        kind, unit, a, _b, pos, what, val = m.groups()
        key = (kind.lower(), unit.lower(), int(a))
        v = float(val)
        if kind.lower() == "train" and unit.lower() == "step":
            step = int(a)
        if what.lower() == "acc":
            (acc if kind.lower() == "train" else eval_acc)[int(pos)] = v
        elif kind.lower() == "train":
            if key != cur_key and cur_losses:
                losses.append(round(sum(cur_losses.values()) / len(cur_losses), 4))
                cur_losses = {}
            cur_key = key
            cur_losses[int(pos)] = v
            ploss[int(pos)] = v
    if cur_losses:
        losses.append(round(sum(cur_losses.values()) / len(cur_losses), 4))
    tq_losses = []
    for m in _TQDM.finditer(text):
        tq_last = m
        tq_losses.append(float(m.group(3)))
    if tq_last is not None and step is None:
        step = int(tq_last.group(1))
    if not losses:
        losses = tq_losses
    acc_list = _per_position(eval_acc) or _per_position(acc)
    acc_mean = float(tq_last.group(4)) if (tq_last is not None and not acc_list) else None
    if not acc_list and acc_mean is None and not losses:
        return {}
    return _record("specforge", step, losses, acc_list, _per_position(ploss) or None, global_batch,
                   "specforge-console", acc_mean=acc_mean)


def parse_log(path_or_text, global_batch: int | None = None) -> dict:
    """One record from a training log file (or its text); UsageError if nothing in it is a training log."""
    if isinstance(path_or_text, Path) or (isinstance(path_or_text, str) and "\n" not in path_or_text
                                           and Path(path_or_text).is_file()):
        path = Path(path_or_text)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise UsageError(f"{path}: cannot read ({err.strerror})") from None
        where = str(path)
    else:
        text, where = str(path_or_text), "<text>"
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            d = json.loads(stripped)
        except ValueError:
            d = None
        if isinstance(d, dict) and d.get("schema") == LOG_SCHEMA:
            return _ours(d)
        if isinstance(d, dict):
            return _tracker_lines([d], global_batch)
    dicts = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and any(_ACC_KEY.match(k) or _LOSS_KEY.match(k) for k in d):
                dicts.append(d)
    if dicts:
        return _tracker_lines(dicts, global_batch)
    rec = _console(text, global_batch)
    if rec:
        return rec
    raise UsageError(f"{where}: not a training log this parser knows (specdec training_log.json, SpecForge "
                     f"tracker JSON lines with train/acc_i, or SpecForge console lines 'position i, Acc: x')")
