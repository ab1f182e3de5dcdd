"""``specdec train --backend local --method eagle3|eagle``: corpus -> probe -> train -> gate -> export.

``eagle`` trains an EAGLE-1 head (``profiler/eagle3/eagle1.py``): it reads the target's output hidden state
and drafts over the target's whole vocabulary with the target's own embedding and lm_head, so
``--draft-vocab`` does not apply to it.

Kept apart from ``profiler/train.py`` so that the CLI module only dispatches
on ``--backend``; everything the local backend does is here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path

from ..errors import UsageError


def run_local(args, log=print) -> int:
    import torch
    from transformers import AutoTokenizer

    from . import capture, data, trainer
    from .export import export

    if args.method not in ("eagle3", "eagle"):
        raise UsageError(f"--method {args.method}: the local backend trains eagle3 and eagle heads only")
    convs = data.read_corpus(Path(args.corpus))  # input errors before any model loading
    target_dir = Path(args.target)
    target = capture.load_target(target_dir)
    try:
        tok = AutoTokenizer.from_pretrained(target_dir)
    except (OSError, ValueError) as err:
        raise UsageError(f"--target {target_dir}: no usable tokenizer ({err})") from None
    if not getattr(tok, "chat_template", None):
        raise UsageError(f"--target {target_dir}: the tokenizer has no chat template to render the corpus with")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    t0 = time.time()
    torch.manual_seed(args.seed)
    rows = data.corpus_rows(tok, convs, args.seq_len)
    n_eval = min(args.eval_rows, max(1, len(rows) // 10))
    if len(rows) - n_eval < 1:
        raise UsageError(f"the corpus renders to {len(rows)} rows of {args.seq_len + 1} tokens: too few to hold "
                         f"out {n_eval} for evaluation; add conversations or lower --seq-len")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))
    rows = rows[perm]
    eval_rows, rows = rows[:n_eval], rows[n_eval:]
    log(f"corpus {args.corpus}: {len(convs)} conversations -> {len(rows)} training rows + {n_eval} held out "
        f"({args.seq_len + 1} tokens each)")
    if args.regenerate:
        rows = data.regenerate_rows(target, rows, args.seed, log=log)
        eval_rows = data.regenerate_rows(target, eval_rows, args.seed + 1)
    if args.method == "eagle":  # the target's vocabulary, its output hidden state (eagle1.py)
        draft_ids = torch.arange(target.config.vocab_size)
        aux = (capture.TARGET_OUTPUT,)
    else:
        draft_ids = data.select_draft_vocab(rows, target.config.vocab_size, args.draft_vocab)
        aux = capture.default_aux_layer_ids(target.config.num_hidden_layers)
    known = {f.name for f in fields(trainer.TrainConfig)}
    cfg = trainer.TrainConfig(**{k: v for k, v in {
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "ttt": args.ttt,
        "seed": args.seed, "checkpoint_every": args.checkpoint_every, "eval_rows": n_eval,
        "draft_vocab": args.draft_vocab}.items() if k in known})
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg, args)
    try:
        head, record = trainer.train(target, rows, eval_rows, cfg, out, aux, draft_ids, log=log,
                                     gate=not args.no_gate, kind=args.method)
    except trainer.GateError as err:
        raise UsageError(f"{err} (log: {out / 'training_log.json'})") from None
    except capture.CaptureError as err:
        raise UsageError(str(err)) from None
    record["data"] = {"corpus": str(args.corpus), "conversations": len(convs), "rows": len(rows),
                      "eval_rows": n_eval, "seq_len": args.seq_len, "regenerated": bool(args.regenerate)}
    record["wall_seconds"] = round(time.time() - t0, 1)
    export(head, target.config, out, record, {"role": args.method, "target": str(target_dir.resolve()),
                                              "simulated_acc_len": record["simulated_acc_len"]})
    log(f"exported to {out}: acc {record['acc']}, simulated_acc_len {record['simulated_acc_len']} "
        f"(serve with --speculative-config '{{\"method\": \"{args.method}\", \"model\": \"{out}\"}}')")
    print(json.dumps({"out": str(out), "acc": record["acc"], "simulated_acc_len": record["simulated_acc_len"],
                      "loss_first": record["loss_first"], "loss_last": record["loss_last"],
                      "samples_seen": record["samples_seen"], "train_seconds": record["train_seconds"]}))
    return 0


def _check_resume(out: Path, cfg, args) -> None:
    """A resume must continue the same run: refuse checkpoints written under another config."""
    stamp = out / "checkpoints" / "run.json"
    want = {"config": {k: v for k, v in cfg.__dict__.items() if k not in ("steps", "checkpoint_every", "log_every")},
            "corpus": os.path.abspath(args.corpus), "target": os.path.abspath(args.target),
            "seq_len": args.seq_len, "regenerate": bool(args.regenerate), "method": args.method}
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        have.setdefault("method", "eagle3")  # stamps from before EAGLE-1 heads were trained here
        if have != want:
            raise UsageError(f"--out {out}: holds checkpoints of a different run ({stamp}); use another --out "
                             f"or delete {out / 'checkpoints'}")
    else:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(want, indent=1) + "\n")
