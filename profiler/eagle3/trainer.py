"""The local EAGLE-3 trainer: training-time-test unroll, acc_i, simulated acceptance length, checkpoints, gate.

Why these pieces:

- Training-time test (EAGLE-3): the head is trained on the inputs it sees
  when drafting, its own previous hidden state for steps 1..K-1, not only on
  the target's. The unroll is ``Eagle3Head.unroll`` (``ttt`` steps).
- Labels are the target's own distribution (distillation, SpecForge's
  choice), restricted to the draft vocabulary; step k is weighted 0.8**k.
  The logged loss is KL(target || draft), i.e. SpecForge's soft cross-entropy
  minus the target's entropy: same gradients, but it goes to 0 for a perfect
  head, so "the loss fell" means the same thing on a peaked or a flat target.
- ``acc_i``: fraction of positions where the draft's argmax (mapped to a
  target id) equals the target's argmax at unroll step i, given a correct
  prefix (teacher forcing), which is what greedy verification accepts.
  ``simulated_acc_len = sum_k prod_{i<=k} acc_i`` is the expected number of
  accepted draft tokens per drafting step; the serving engine reports
  ``1 + accepted/drafts`` (the bonus token included), logged beside it as
  ``simulated_acceptance_length``.
- Checkpoints every N steps (model, optimizer, step, history); a rerun into
  the same ``--out`` resumes from the last one. Data order is a function of
  the step (seeded per epoch), so a resumed run equals an uninterrupted one.
- The gate (``check_gate``): the loss must fall and acc_0 must beat the
  majority-class rate (a head that always predicts the most frequent token),
  or the run fails with the numbers; a degenerate head must never be exported.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .capture import Captured, capture, probe
from .logs import LOG_SCHEMA, simulated_acc_len  # torch-free, shared with the tuner
from .model import Eagle3Head, HeadConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 240
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 15
    ttt: int = 3
    seed: int = 1234
    checkpoint_every: int = 100
    log_every: int = 25
    eval_rows: int = 32
    draft_vocab: int = 1024
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0


class GateError(RuntimeError):
    """Training did not learn (loss flat or acc_0 at chance): the head is not exported."""


def head_config_for(target_cfg, aux_ids: tuple[int, ...], draft_vocab: int, kind: str = "eagle3") -> HeadConfig:
    rope = getattr(target_cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(target_cfg, "rope_theta", 10000.0))
    heads = target_cfg.num_attention_heads
    return HeadConfig(
        hidden=target_cfg.hidden_size, heads=heads,
        kv_heads=getattr(target_cfg, "num_key_value_heads", heads),
        head_dim=getattr(target_cfg, "head_dim", None) or target_cfg.hidden_size // heads,
        intermediate=target_cfg.intermediate_size, vocab=target_cfg.vocab_size,
        draft_vocab=min(draft_vocab, target_cfg.vocab_size), target_hidden=target_cfg.hidden_size,
        aux_layer_ids=tuple(aux_ids), rms_eps=target_cfg.rms_norm_eps, rope_theta=float(theta),
        max_positions=target_cfg.max_position_embeddings, kind=kind)


def make_head(target, hcfg: HeadConfig, draft_to_target: torch.Tensor):
    """A fresh head of ``hcfg.kind`` around the target's frozen embedding (and, for EAGLE-1, its lm_head)."""
    if hcfg.kind == "eagle":
        from .eagle1 import Eagle1Head

        return Eagle1Head(hcfg, target.model.embed_tokens.weight.detach(), target.lm_head.weight.detach())
    head = Eagle3Head(hcfg, target.model.embed_tokens.weight.detach())
    head.set_vocab(draft_to_target)
    return head


def step_losses(head: Eagle3Head, cap: Captured, tokens: torch.Tensor, ttt: int):
    """Per-step soft-CE losses, accuracies and valid counts for one batch."""
    b, t = tokens.shape
    outs = head.unroll(cap.aux, tokens, ttt)
    draft_ids = head.draft_ids
    p_all = cap.logits[:, 1:, draft_ids].softmax(-1)  # the target's distribution over the draft vocab
    top_all = cap.logits[:, 1:].argmax(-1)
    losses, accs, counts = [], [], []
    for k, logits in enumerate(outs):
        n = t - 1 - k  # chains 0..n-1 have an input token tokens[t+1+k] and a label at position t+1+k
        if n <= 0:
            break
        lg = logits[:, :n]
        p = p_all[:, k:k + n]
        losses.append((p * (p.clamp_min(1e-30).log() - F.log_softmax(lg, -1))).sum(-1).mean())
        hit = draft_ids[lg.argmax(-1)] == top_all[:, k:k + n]
        accs.append(hit.float().mean())
        counts.append(hit.numel())
    return losses, accs, counts


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def _batch_index(n_rows: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Rows for ``step``: a fresh seeded permutation per epoch, so the order depends on the step only."""
    per_epoch = max(1, n_rows // batch)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return perm[k * batch:(k + 1) * batch]


@torch.no_grad()
def evaluate(head: Eagle3Head, target, rows: torch.Tensor, aux_ids, ttt: int, batch: int = 16) -> dict:
    head.eval()
    tot_loss = [0.0] * ttt
    tot_hit = [0.0] * ttt
    tot_n = [0] * ttt
    majority_hits = 0.0
    majority_n = 0
    for s in range(0, len(rows), batch):
        x = rows[s:s + batch]
        cap = capture(target, x, aux_ids)
        losses, accs, counts = step_losses(head, cap, x, ttt)
        for k in range(len(losses)):
            tot_loss[k] += losses[k].item() * counts[k]
            tot_hit[k] += accs[k].item() * counts[k]
            tot_n[k] += counts[k]
        am = cap.logits[:, 1:].argmax(-1).flatten()
        majority_hits += torch.bincount(am).max().item()
        majority_n += am.numel()
    head.train()
    acc = [round(tot_hit[k] / tot_n[k], 4) for k in range(ttt) if tot_n[k]]
    loss = [round(tot_loss[k] / tot_n[k], 4) for k in range(ttt) if tot_n[k]]
    return {"acc": acc, "ploss": loss, "loss": round(sum(loss) / len(loss), 4),
            "majority_rate": round(majority_hits / max(1, majority_n), 4),
            "simulated_acc_len": round(simulated_acc_len(acc), 4),
            "simulated_acceptance_length": round(1 + simulated_acc_len(acc), 4)}


def check_gate(record: dict, min_drop: float = 0.1, margin: float = 0.02) -> dict:
    """Non-degenerate training: loss fell by ``min_drop`` (relative) and acc_0 beats the majority rate + margin.

    Works on the parsed record of either backend (``logs.parse_log``): it
    needs ``loss_first``, ``loss_last`` and ``acc`` (final per-position
    accuracy); ``chance`` defaults to the majority-class rate when present.
    """
    first, last = record.get("loss_first"), record.get("loss_last")
    acc = record.get("acc") or []
    chance = record.get("chance")
    if chance is None:
        chance = 1.0 / max(1, record.get("draft_vocab") or 1)
    reasons = []
    if first is None or last is None or not math.isfinite(last):
        reasons.append(f"no usable loss curve (first {first}, last {last})")
    elif last > first * (1 - min_drop):
        reasons.append(f"loss did not fall: first {first:.4f} -> last {last:.4f} "
                       f"(needs <= {first * (1 - min_drop):.4f})")
    if not acc:
        reasons.append("no per-position accuracy recorded")
    elif acc[0] <= chance + margin:
        reasons.append(f"acc_0 {acc[0]:.4f} is not above chance {chance:.4f} (+{margin})")
    gate = {"passed": not reasons, "reasons": reasons, "loss_first": first, "loss_last": last,
            "acc_0": acc[0] if acc else None, "chance": chance}
    if reasons:
        raise GateError("training gate failed: " + "; ".join(reasons))
    return gate


def _save_checkpoint(ckpt_dir: Path, step: int, head, opt, history: list, keep: int = 2) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "head": head.state_dict(), "opt": opt.state_dict(), "history": history}, tmp)
    os.replace(tmp, path)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(Path(ckpt_dir).glob("step_*.pt"))
    return found[-1] if found else None


def train(target, rows: torch.Tensor, eval_rows: torch.Tensor, cfg: TrainConfig, work_dir: Path,
          aux_ids: tuple[int, ...], draft_to_target: torch.Tensor, log=print, gate: bool = True,
          kind: str = "eagle3") -> tuple:
    """Probe, then train a head; returns (head, record). Checkpoints go to ``work_dir/checkpoints``.

    ``kind``: "eagle3", or "eagle" (EAGLE-1: ``aux_ids`` must be ``(capture.TARGET_OUTPUT,)`` and
    ``draft_to_target`` every target id, since the head drafts over the target's own vocabulary and lm_head).
    """
    if kind == "eagle":
        from .capture import TARGET_OUTPUT

        if tuple(aux_ids) != (TARGET_OUTPUT,):
            raise ValueError(f"an EAGLE-1 head reads the target's output hidden state only (aux_ids "
                             f"({TARGET_OUTPUT},)), got {tuple(aux_ids)}")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
    work_dir = Path(work_dir)
    probe_rec = probe(target, rows[:4], aux_ids)
    log(f"capture probe passed: max |logit diff| {probe_rec['max_abs_logit_diff']:.2g} over "
        f"{probe_rec['tokens']} tokens, aux layers {list(aux_ids)}")
    vocab = target.config.vocab_size if kind == "eagle" else cfg.draft_vocab
    hcfg = head_config_for(target.config, aux_ids, vocab, kind)
    head = make_head(target, hcfg, draft_to_target)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    history: list[dict] = []
    start = 0
    ckpt_dir = work_dir / "checkpoints"
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        st = torch.load(last, map_location="cpu", weights_only=False)
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        history = st["history"]
        start = st["step"]
        log(f"resuming from {last} (step {start}/{cfg.steps})")
    t0 = time.time()
    head.train()
    seq = rows.shape[1]
    for step in range(start, cfg.steps):
        x = rows[_batch_index(len(rows), cfg.batch, step, cfg.seed)]
        cap = capture(target, x, aux_ids)
        losses, accs, _ = step_losses(head, cap, x, cfg.ttt)
        loss = sum((0.8 ** k) * l for k, l in enumerate(losses)) / sum(0.8 ** k for k in range(len(losses)))
        lr = _lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        history.append({"step": step + 1, "samples": (step + 1) * cfg.batch, "loss": round(loss.item(), 4),
                        "acc": [round(a.item(), 4) for a in accs], "lr": round(lr, 7)})
        if (step + 1) % cfg.log_every == 0 or step == start or step + 1 == cfg.steps:
            acc = history[-1]["acc"]
            log(f"  {kind} step {step + 1}/{cfg.steps} loss {loss.item():.3f} acc "
                f"{' '.join(f'{a:.2f}' for a in acc)} sim_acc_len {simulated_acc_len(acc):.2f} "
                f"({time.time() - t0:.0f}s)")
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            _save_checkpoint(ckpt_dir, step + 1, head, opt, history)
    train_seconds = time.time() - t0
    ev = evaluate(head, target, eval_rows, aux_ids, cfg.ttt)
    log(f"eval on {len(eval_rows)} held-out rows: acc {ev['acc']} simulated_acc_len {ev['simulated_acc_len']} "
        f"(majority rate {ev['majority_rate']})")
    n_first = max(1, min(10, len(history) // 10 or 1))
    record = {
        "schema": LOG_SCHEMA, "backend": "local", "method": kind,
        "config": asdict(cfg), "head": hcfg.to_dict(), "probe": probe_rec,
        "rows": int(len(rows)), "seq_len": int(seq - 1), "steps": cfg.steps, "resumed_from": start or None,
        "samples_seen": cfg.steps * cfg.batch, "tokens_seen": cfg.steps * cfg.batch * (seq - 1),
        "train_seconds": round(train_seconds, 1),
        "loss_first": round(sum(h["loss"] for h in history[:n_first]) / n_first, 4),
        "loss_last": round(sum(h["loss"] for h in history[-n_first:]) / n_first, 4),
        "eval": ev, "acc": ev["acc"], "simulated_acc_len": ev["simulated_acc_len"],
        "simulated_acceptance_length": ev["simulated_acceptance_length"],
        "chance": ev["majority_rate"], "draft_vocab": hcfg.draft_vocab, "history": history,
    }
    if gate:
        try:
            record["gate"] = check_gate(record)
        except GateError as err:
            record["gate"] = {"passed": False, "reasons": [str(err)]}
            work_dir.mkdir(parents=True, exist_ok=True)
            (work_dir / "training_log.json").write_text(json.dumps(record, indent=1) + "\n")
            raise
    return head, record
