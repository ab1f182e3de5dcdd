"""`specdec tiny-model`: build (or reuse) the project's own tiny Llama target and draft models.

No model hub is reachable from CI, and the adapters must be tested against a
real engine running a real model, so the project builds its own:

- a byte-level BPE tokenizer trained with ``tokenizers`` on Python's own
  standard-library sources (the interpreter running this), with a chat
  template (``<|user|>`` / ``<|assistant|>`` / ``<|end|>``);
- a Llama-architecture target (``LlamaForCausalLM``) trained for a few minutes
  on this CPU on the same text, plus chat-shaped samples (rewrite a snippet,
  continue a snippet), so that greedy output has real structure and answers
  that repeat their prompt exist (prompt lookup has something to find);
- with ``--draft``, a smaller Llama sharing the tokenizer, trained on the same
  sample stream, so that it agrees with the target often but not always.

Everything is seeded. A build is identified by a fingerprint of its inputs
(recipe, sizes, corpus sha256, torch version); the model folder carries
``specdec_tiny.json`` with that fingerprint and the sha256 of every file, and
is reused only if all of them verify. The training loss curve is in
``training_log.json`` beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECIPE_VERSION = 3
MANIFEST = "specdec_tiny.json"
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_EXCLUDE_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    steps: int
    batch: int = 16
    seq_len: int = 128
    lr: float = 2e-3
    max_positions: int = 2048


TARGET = ModelSpec("tiny-target", hidden=192, layers=4, heads=6, kv_heads=2, intermediate=512, steps=500)
DRAFT = ModelSpec("tiny-draft", hidden=96, layers=2, heads=3, kv_heads=1, intermediate=256, steps=400)
VOCAB_SIZE = 4096
SEED = 1234


def default_home() -> Path:
    return Path(os.environ.get("SPECDEC_HOME", Path.home() / ".cache" / "specdec-engine"))


# --------------------------------------------------------------------------- corpus
def stdlib_files() -> list[Path]:
    """The interpreter's own standard-library sources, tests and GUI demos excluded, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not (_EXCLUDE_PARTS & set(p.relative_to(root).parts))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def corpus_fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def read_corpus(files: list[Path]) -> list[str]:
    texts = []
    for p in files:
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if t.strip():
            texts.append(t)
    return texts


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = TARGET.max_positions
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


# --------------------------------------------------------------------------- training data
def _chat(tok, user: str, assistant: str) -> list[int]:
    text = f"<|user|>\n{user}<|end|>\n<|assistant|>\n{assistant}<|end|>\n"
    return tok(text, add_special_tokens=False)["input_ids"]


def build_samples(tok, texts: list[str], n_samples: int, seq_len: int, seed: int) -> "torch.Tensor":
    """Fixed-length training rows: 70% plain source windows, 30% chat-shaped samples.

    The chat rows teach the format the serving tests use: "Rewrite this
    code" (the answer repeats the snippet: the code-editing workload) and
    "Continue this code" (open generation).
    """
    import random

    import torch

    rng = random.Random(seed)
    stream = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    rows = []
    for i in range(n_samples):
        if rng.random() < 0.7:
            start = rng.randrange(0, len(stream) - seq_len - 1)
            rows.append(stream[start:start + seq_len + 1])
            continue
        text = texts[rng.randrange(len(texts))]
        lines = text.splitlines()
        a = rng.randrange(0, max(1, len(lines) - 8))
        snippet = "\n".join(lines[a:a + rng.randint(3, 8)])[:300]
        if rng.random() < 0.5:
            ids = _chat(tok, f"Rewrite this code:\n{snippet}\n", f"{snippet}\n")
        else:
            more = "\n".join(lines[a + 8:a + 16])[:300]
            ids = _chat(tok, f"Continue this code:\n{snippet}\n", f"{more}\n")
        ids = (ids + stream[:seq_len + 1])[:seq_len + 1]
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.long)


# --------------------------------------------------------------------------- training
def train_model(spec: ModelSpec, tok, samples, eval_samples, out: Path, log=print) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden // spec.heads, max_position_embeddings=spec.max_positions, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, spec.steps // 15)

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, spec.steps - warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            x = eval_samples
            loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss.item()
        model.train()
        return loss

    history = []
    t0 = time.time()
    model.train()
    for step in range(spec.steps):
        idx = torch.arange(step * spec.batch, (step + 1) * spec.batch) % len(samples)
        x = samples[idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(round(loss.item(), 4))
        if step % 50 == 0 or step == spec.steps - 1:
            log(f"  {spec.name}: step {step + 1}/{spec.steps} loss {loss.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    final_eval = eval_loss()
    model.config.torch_dtype = torch.float32
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _write_generation_config(out, tok)
    record = {
        "model": spec.name, "params": n_params, "spec": asdict(spec), "steps": spec.steps,
        "tokens_seen": spec.steps * spec.batch * spec.seq_len, "train_seconds": round(time.time() - t0, 1),
        "loss_first": history[0], "loss_last_50_mean": round(sum(history[-50:]) / len(history[-50:]), 4),
        "eval_loss": round(final_eval, 4), "loss_curve": history,
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _write_generation_config(out: Path, tok) -> None:
    # Only the stop tokens: vLLM takes default sampling params from this file and we want none.
    gen = {"bos_token_id": tok.bos_token_id,
           "eos_token_id": [tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# --------------------------------------------------------------------------- manifest / reuse
def _file_hashes(d: Path, manifest: str = MANIFEST) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(d).iterdir()) if p.is_file() and p.name != manifest}


def verify(d: Path, fingerprint: str, manifest: str = MANIFEST) -> bool:
    """``d`` holds a complete build of ``fingerprint``: its manifest matches and every file's sha256 too."""
    try:
        man = json.loads((Path(d) / manifest).read_text())
    except (OSError, ValueError):
        return False
    if man.get("fingerprint") != fingerprint:
        return False
    try:
        return _file_hashes(d, manifest) == man.get("files")
    except OSError:
        return False


def _write_manifest(d: Path, fingerprint: str, extra: dict) -> None:
    man = {"fingerprint": fingerprint, "recipe_version": RECIPE_VERSION, "files": _file_hashes(d), **extra}
    (d / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")


@dataclass
class BuildResult:
    target: Path
    draft: Path | None = None
    built: list = field(default_factory=list)


def fingerprint_for(spec: ModelSpec, corpus_sha: str, parent: str = "") -> str:
    import torch

    blob = json.dumps({"recipe": RECIPE_VERSION, "spec": asdict(spec), "vocab": VOCAB_SIZE, "seed": SEED,
                       "corpus": corpus_sha, "torch": torch.__version__.split("+")[0], "parent": parent},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


WIDE = {"hidden": 1024, "heads": 32, "kv_heads": 8, "intermediate": 4096}


def build_wide(target_dir: Path, force: bool = False, log=print) -> Path:
    """The benchmark target: the trained target embedded in a 69M-parameter Llama (see ``widen.py``)."""
    from .widen import widen

    parent = json.loads((target_dir / MANIFEST).read_text())["fingerprint"]
    fp = hashlib.sha256(json.dumps({"parent": parent, "wide": WIDE, "recipe": RECIPE_VERSION},
                                   sort_keys=True).encode()).hexdigest()
    out = target_dir.parent / f"tiny-target-wide-{fp[:12]}"
    if force or not verify(out, fp):
        log(f"building tiny-target-wide -> {out}")
        check = widen(target_dir, out, **WIDE)
        log(f"  widened to {check['params'] / 1e6:.1f}M parameters; max |logit diff| vs the trained target "
            f"{check['max_abs_logit_diff']:.2g}, argmax agreement {check['argmax_agreement']:.3f}")
        _write_manifest(out, fp, {"role": "target-wide", "target": str(target_dir), **check})
    return out


def build(out_root: Path | None = None, draft: bool = False, force: bool = False, log=print) -> BuildResult:
    """Build or reuse the target (and the draft); returns their folders."""
    out_root = Path(out_root) if out_root else default_home() / "models"
    files = stdlib_files()
    if not files:
        raise RuntimeError(f"no standard-library sources found under {sysconfig.get_paths()['stdlib']}")
    corpus_sha = corpus_fingerprint(files)
    fp_t = fingerprint_for(TARGET, corpus_sha)
    target_dir = out_root / f"{TARGET.name}-{fp_t[:12]}"
    result = BuildResult(target_dir)
    texts = None
    tok = None
    samples = eval_samples = None

    def data():
        nonlocal texts, tok, samples, eval_samples
        if samples is None:
            from transformers import AutoTokenizer

            texts = read_corpus(files)
            held_out = texts[-20:]
            tok = AutoTokenizer.from_pretrained(target_dir) if (target_dir / "tokenizer.json").exists() else None
            if tok is None:
                log(f"training tokenizer on {len(texts)} stdlib files ({corpus_sha[:12]})")
                tok = train_tokenizer(texts[:-20], target_dir.with_name(target_dir.name + ".tok"))
            n = max(TARGET.steps * TARGET.batch, DRAFT.steps * DRAFT.batch)
            samples = build_samples(tok, texts[:-20], n, TARGET.seq_len, SEED)
            eval_samples = build_samples(tok, held_out, 64, TARGET.seq_len, SEED + 1)
        return tok, samples, eval_samples

    if force or not verify(target_dir, fp_t):
        log(f"building {TARGET.name} -> {target_dir}")
        tmp = target_dir.with_name(target_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target_dir.with_name(target_dir.name + ".tok"), ignore_errors=True)
        shutil.rmtree(target_dir, ignore_errors=True)
        tok, samples, eval_samples = data()
        rec = train_model(TARGET, tok, samples, eval_samples, tmp, log)
        _write_manifest(tmp, fp_t, {"role": "target", "corpus_sha256": corpus_sha, "eval_loss": rec["eval_loss"]})
        os.replace(tmp, target_dir)
        shutil.rmtree(target_dir.with_name(target_dir.name + ".tok"), ignore_errors=True)
        result.built.append(str(target_dir))
    if draft:
        fp_d = fingerprint_for(DRAFT, corpus_sha, parent=fp_t)
        draft_dir = out_root / f"{DRAFT.name}-{fp_d[:12]}"
        result.draft = draft_dir
        if force or not verify(draft_dir, fp_d):
            log(f"building {DRAFT.name} -> {draft_dir}")
            tmp = draft_dir.with_name(draft_dir.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(draft_dir, ignore_errors=True)
            tok, samples, eval_samples = data()
            rec = train_model(DRAFT, tok, samples, eval_samples, tmp, log)
            _write_manifest(tmp, fp_d, {"role": "draft", "target": str(target_dir), "eval_loss": rec["eval_loss"]})
            os.replace(tmp, draft_dir)
            result.built.append(str(draft_dir))
    return result


def main(args) -> int:
    """CLI entry (``specdec tiny-model``): progress on stderr, the model folder as stdout's last line."""
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res = build(Path(args.out) if args.out else None, draft=args.draft, force=args.force, log=log)
    wide = build_wide(res.target, force=args.force, log=log) if args.wide else None
    eagle3 = None
    if getattr(args, "eagle3", False):
        from .eagle3.tiny import build_eagle3

        eagle3 = build_eagle3(res.target, force=args.force, log=log)
    eagle1 = None
    if getattr(args, "eagle", False):
        from .eagle3.tiny import build_eagle3

        eagle1 = build_eagle3(res.target, force=args.force, log=log, kind="eagle")
    print(f"target: {res.target}")
    if res.draft is not None:
        print(f"draft: {res.draft}")
    if wide is not None:
        print(f"wide: {wide}")
    if eagle3 is not None:
        print(f"eagle3: {eagle3}")
    if eagle1 is not None:
        print(f"eagle: {eagle1}")
    print(eagle1 or eagle3 or wide or res.draft or res.target)
    return 0
