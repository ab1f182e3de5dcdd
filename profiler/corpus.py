"""`specdec corpus`: a workload profile -> a draft-training corpus matched to the traffic it describes.

    specdec corpus --profile workload-profile.json --out corpus.jsonl [--traffic redacted.jsonl]
        [--mode direct|plan] [--chat-template PATH] [--rows N] [--max-length N]

``direct`` turns traffic (any shape ``specdec profile`` reads; by default the profile's own
``--keep-samples`` exemplars) into SpecForge rows ``{"id", "conversations": [{"role", "content"}]}``:
redacted (:mod:`specdec_profiler.redact`; ``--no-redact`` to skip), deduplicated (exact, on the redacted
conversation), and sampled to the profile's class mix and, within each class, its output-length buckets.
Two streaming passes: the first counts what each (class, length bucket) cell offers, the second keeps a
uniform sample of each cell's quota (bottom-k on a hash of the row: deterministic, no state but the
kept rows and the dedup hashes). ``N`` is ``--rows`` or the largest corpus whose class mix matches
the profile's; cells short of their quota are reported, never padded with duplicates.

``plan`` writes a weighted plan over SpecForge's ``scripts/prepare_data.py`` dataset presets matched to
the class mix (JSON at ``--out``, the commands beside it as ``.sh``). The preset list is SpecForge's
``--dataset`` choices at sgl-project/SpecForge commit 006acbdac99e2a867a4011b596e3a71645730f4e
(``scripts/prepare_data.py``; ``magpie-qwen2.5-pro-1m-v0.1`` there, not v0.3). No preset is made of
rewrites, JSON outputs, reasoning traces or long contexts: those classes map to the closest presets and
the plan says so; ``direct`` on real traffic is the better source for them.

The gate: every row is rendered through the target's chat template (``--chat-template``: a ``.jinja``
file, ``tokenizer_config.json`` or tokenizer folder; default the profile's ``--tokenizer``) and must get a
non-empty assistant loss mask: a row with a zero mask trains nothing. Assistant spans are found by
rendering each conversation prefix with the generation prompt and the conversation up to and including
that assistant turn (the difference is what the assistant produced, end-of-turn token included), which
works for templates without ``{% generation %}`` tags. With a tokenizer the mask is counted in tokens,
within ``--max-length`` (SpecForge truncates there: a row whose assistant turn starts past it has a zero
mask). Failures are listed in ``<out>.rejects.jsonl`` with the reason, and everything is summarised in
``<out>.report.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from . import traffic as tr
from .chat_template import ChatTemplate, HFTokenizer, load_template
from .content_class import classify_record
from .errors import UsageError
from .redact import redact
from .workload_profile import OSL_EDGES, WorkloadProfile, _coarse_index, conversation

SPECFORGE_COMMIT = "006acbdac99e2a867a4011b596e3a71645730f4e"
SPECFORGE_SOURCE = f"sgl-project/SpecForge@{SPECFORGE_COMMIT}:scripts/prepare_data.py"
DEFAULT_MAX_LENGTH = 2048  # SpecForge's training default (--max-length)
DEFAULT_PLAN_ROWS = 100_000

# SpecForge preset -> Hugging Face dataset it loads (from prepare_data.py at SPECFORGE_COMMIT).
SPECFORGE_PRESETS = {
    "ultrachat": "HuggingFaceH4/ultrachat_200k",
    "sharegpt": "Aeala/ShareGPT_Vicuna_unfiltered",
    "eaglechat": "zhaode/EagleChat",
    "perfectblend": "mlabonne/open-perfectblend",
    "magpie-qwen2.5-pro-1m-v0.1": "Magpie-Align/Magpie-Qwen2.5-Pro-1M-v0.1",
    "opc": "OpenCoder-LLM/opc-sft-stage1",
    "gsm8k": "openai/gsm8k",
    "hendrycks_math": "EleutherAI/hendrycks_math",
    "math_qa": "allenai/math_qa",
    "codealpaca-20k": "sahil2801/CodeAlpaca-20k",
    "opencodeinstruct": "nvidia/OpenCodeInstruct",
    "magicoder-evol-instruct": "ise-uiuc/Magicoder-Evol-Instruct-110K",
    "sciq": "allenai/sciq",
    "camel": "camel-ai/biology + chemistry + physics",
}
# content class -> [(preset, share of the class)], and what the mapping cannot give.
CLASS_PRESETS: dict[str, tuple[list[tuple[str, float]], str | None]] = {
    "chat": ([("ultrachat", 0.5), ("sharegpt", 0.5)], None),
    "code": ([("opc", 0.5), ("magicoder-evol-instruct", 0.3), ("opencodeinstruct", 0.2)], None),
    "rewrite": ([("sharegpt", 0.5), ("magicoder-evol-instruct", 0.5)],
                "no SpecForge preset is made of rewrites/edits: ShareGPT's real user requests and Magicoder's "
                "code edits are the closest; build these rows with --mode direct from your traffic"),
    "structured": ([("magpie-qwen2.5-pro-1m-v0.1", 0.6), ("opencodeinstruct", 0.4)],
                   "no preset of JSON/tool-call outputs: use --mode direct for structured traffic"),
    "math": ([("gsm8k", 0.4), ("hendrycks_math", 0.4), ("math_qa", 0.2)], None),
    "reasoning": ([("hendrycks_math", 0.5), ("camel", 0.5)],
                  "no preset holds reasoning traces: regenerate the responses with the target, reasoning on "
                  "(SpecForge scripts/regenerate_train_data.py), or the draft never sees reasoning tokens"),
    "long_context": ([("ultrachat", 1.0)],
                     "no long-context preset, and SpecForge trains at --max-length (2048 by default): raise it "
                     "and use --mode direct for long prompts"),
    "other": ([("ultrachat", 1.0)], "pre-labelled classes outside the vocabulary: mapped to general chat"),
}
_TOOL_ROLES = {"tool", "function", "ipython"}


# ---------------------------------------------------------------------------- input
def load_profile(path: str | Path) -> WorkloadProfile:
    """The profile at ``path``; UsageError naming the file (and the field) when it is not one."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--profile {p}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--profile {p}: cannot read ({err})") from None
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise UsageError(f"--profile {p}: not JSON (line {getattr(err, 'lineno', '?')}: {err})") from None
    try:
        return WorkloadProfile.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        raise UsageError(f"--profile {p}: not a workload profile: {loc}: {e['msg']} "
                         f"({err.error_count()} error(s); made by `specdec profile`?)") from None


def row_conversation(rec: tr.Record, reasoning: str = "think-tags") -> list[dict]:
    """SpecForge turns for a traffic record: the request's turns, then the response as the assistant turn.

    Roles: ``developer`` -> ``system``; tool results -> ``user`` turns prefixed ``[tool result]``;
    assistant tool calls become text. The response's reasoning is kept as ``<think>...</think>``
    before the answer (``--reasoning think-tags``) or dropped (``drop``).
    """
    turns = []
    for m in conversation(rec):
        role, content = m["role"], m["content"]
        if role == "developer":
            role = "system"
        elif role in _TOOL_ROLES:
            role, content = "user", f"[tool result]\n{content}"
        if turns and turns[-1]["role"] == role and role != "system":
            turns[-1]["content"] += "\n\n" + content  # templates expect alternating user/assistant turns
        else:
            turns.append({"role": role, "content": content})
    answer = rec.completion
    calls = tr._tool_calls_text(rec.tool_calls)
    if calls:
        answer = (answer + "\n" if answer else "") + "[tool_calls] " + calls
    if reasoning == "think-tags" and rec.reasoning.strip():
        answer = f"<think>\n{rec.reasoning.strip()}\n</think>\n\n{answer}"
    turns.append({"role": "assistant", "content": answer})
    return turns


def _records_from_samples(prof: WorkloadProfile):
    """The profile's exemplars as records (already redacted)."""
    for cls, samples in (prof.samples or {}).items():
        for s in samples:
            rec = tr.Record("sample", messages=[m.model_dump() for m in s.messages], completion=s.completion,
                            reasoning=s.reasoning or "", prompt_tokens=s.prompt_tokens,
                            completion_tokens=s.completion_tokens, label=cls, lineno=s.line)
            yield tr.scan(rec)


# ---------------------------------------------------------------------------- the gate
class Gate:
    """Renders rows through the target's chat template and measures their assistant loss mask."""

    def __init__(self, template: ChatTemplate, tokenizer: HFTokenizer | None, max_length: int):
        self.template = template
        self.tok = tokenizer
        self.max_length = max_length

    def spans(self, turns: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """(full rendering, [start, end) character spans of each assistant turn in it)."""
        full = self.template.render(turns)
        spans, cursor = [], 0
        for i, t in enumerate(turns):
            if t["role"] != "assistant":
                continue
            prefix = self.template.render(turns[:i], add_generation_prompt=True)
            upto = self.template.render(turns[: i + 1])
            if upto.startswith(prefix) and full.startswith(upto) and len(upto) > len(prefix):
                spans.append((len(prefix), len(upto)))
                cursor = len(upto)
                continue
            # templates that rewrite earlier turns: locate the content after the previous span
            content = t["content"].strip()
            j = full.find(content, cursor) if content else -1
            if j < 0:
                raise _Reject("assistant_not_in_render", f"assistant turn {i} not found in the rendered text")
            spans.append((j, j + len(content)))
            cursor = j + len(content)
        return full, spans

    def check(self, turns: list[dict]) -> dict:
        """Mask statistics of one row; raises :class:`_Reject` (reason, detail) when it would train nothing."""
        if not any(t["role"] == "assistant" for t in turns):
            raise _Reject("no_assistant_turn", "no assistant turn")
        if not turns[-1]["content"].strip():
            raise _Reject("empty_assistant", "the final assistant turn is empty")
        try:
            full, spans = self.spans(turns)
        except _Reject:
            raise
        except Exception as err:  # jinja2 errors, raise_exception() in templates
            raise _Reject("render_error", f"{type(err).__name__}: {str(err)[:200]}") from None
        last = turns[-1]["content"].strip()
        s0, s1 = spans[-1]
        if last[:32] not in full[s0:s1]:
            raise _Reject("assistant_content_altered", "the template does not render the assistant text as given")
        if self.tok is None:
            mask_chars = sum(b - a for a, b in spans)
            if mask_chars == 0:
                raise _Reject("zero_mask", "the assistant spans are empty")
            return {"mask_chars": mask_chars, "chars": len(full), "mask_tokens": None, "tokens": None}
        offsets = self.tok.encode_offsets(full)
        mask = truncated = 0
        k = 0
        for idx, (a, _) in enumerate(offsets):
            while k < len(spans) and a >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= a < spans[k][1]:
                if idx < self.max_length:
                    mask += 1
                else:
                    truncated += 1
        if mask == 0:
            if truncated:
                raise _Reject("zero_mask_after_truncation",
                              f"{len(offsets)} tokens: the assistant turn starts after --max-length {self.max_length}")
            raise _Reject("zero_mask", "no token falls in an assistant span")
        return {"mask_tokens": mask, "tokens": len(offsets), "mask_chars": sum(b - a for a, b in spans),
                "chars": len(full), "truncated_mask_tokens": truncated}


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _gate_for(args, prof: WorkloadProfile) -> Gate:
    path = args.chat_template or prof.provenance.token_counting.tokenizer_path
    if not path:
        raise UsageError("--chat-template is required: every row is rendered through the target's chat template "
                         "(a .jinja file or tokenizer folder; the profile was made without --tokenizer)")
    flag = "--chat-template" if args.chat_template else "profile's tokenizer_path"
    template = load_template(path, flag)
    p = Path(path)
    tok_dir = p if p.is_dir() else p.parent
    tok = HFTokenizer(tok_dir, flag) if (tok_dir / "tokenizer.json").is_file() else None
    return Gate(template, tok, args.max_length)


# ---------------------------------------------------------------------------- direct mode
def _targets(prof: WorkloadProfile) -> dict[tuple[str, int], float]:
    """Target share of each (class, output-length bucket) cell, from the profile."""
    out = {}
    for cls, share in prof.content_class_mix.items():
        pc = prof.per_class.get(cls)
        if not share or pc is None:
            continue
        n = sum(b.count for b in pc.osl_buckets) or 1
        for j, b in enumerate(pc.osl_buckets):
            if b.count:
                out[(cls, j)] = share * b.count / n
    return out


def _quotas(targets: dict, avail: Counter, rows: int | None) -> tuple[dict, int, list[str]]:
    """Rows to take per cell: the class mix is matched exactly (up to rounding), then the length buckets
    within each class as far as the cells allow (a short cell's quota moves to the same class's others)."""
    notes = []
    cls_target: dict[str, float] = {}
    for (c, _), w in targets.items():
        cls_target[c] = cls_target.get(c, 0.0) + w
    cls_avail = Counter()
    for (c, _), n in avail.items():
        cls_avail[c] += n
    missing = [c for c in cls_target if not cls_avail[c]]
    for c in missing:
        notes.append(f"class {c} ({cls_target[c]:.1%} of traffic) has no usable row: left out, others renormalised")
    live = {c: w for c, w in cls_target.items() if cls_avail[c]}
    if not live:
        return {}, 0, notes
    z = sum(live.values())
    share = {c: w / z for c, w in live.items()}
    n_max = min(cls_avail[c] / s for c, s in share.items())
    n = int(math.floor(n_max + 1e-9)) if rows is None else min(rows, int(math.floor(n_max + 1e-9)))
    if rows is not None and rows > n:
        notes.append(f"--rows {rows}: only {n} rows match the class mix (scarcest class: "
                     f"{min(share, key=lambda c: cls_avail[c] / share[c])})")
    quotas: dict[tuple[str, int], int] = {}
    for c, s in share.items():
        qc = round(n * s)
        cells = {k: w for k, w in targets.items() if k[0] == c}
        wsum = sum(cells.values())
        want = {k: qc * w / wsum for k, w in cells.items()}
        got = {k: min(avail[k], int(math.floor(v))) for k, v in want.items()}
        left = qc - sum(got.values())
        # hand the remainder out by largest unmet want, then to any cell of the class with rows left
        for k in sorted(want, key=lambda k: -(want[k] - got[k])):
            if left <= 0:
                break
            if got[k] < avail[k]:
                got[k] += 1
                left -= 1
        extra = sorted((k for k in avail if k[0] == c), key=lambda k: -(avail[k] - got.get(k, 0)))
        while left > 0:
            moved = False
            for k in extra:
                if left and got.get(k, 0) < avail[k]:
                    got[k] = got.get(k, 0) + 1
                    left -= 1
                    moved = True
            if not moved:
                break
        if any(got.get(k, 0) < want[k] - 1 for k in want):
            notes.append(f"class {c}: output-length buckets short of rows; quota moved within the class")
        quotas.update({k: v for k, v in got.items() if v})
    return quotas, n, notes


def _row_key(turns: list[dict]) -> tuple[str, float]:
    """(id, sampling key in [0, 1)) from the row's content: duplicates share both; no RNG state."""
    h = hashlib.sha256(json.dumps(turns, ensure_ascii=False, sort_keys=True).encode()).digest()
    return h[:12].hex(), int.from_bytes(h[12:20], "big") / 2.0 ** 64


def _iter_rows(args, prof: WorkloadProfile, counters: Counter):
    """(turns, class, length bucket, id, key, line) for each usable traffic record (not yet redacted)."""
    if args.traffic:
        reader = tr.TrafficReader(args.traffic, strict=args.strict)
        records = iter(reader)
    else:
        if not prof.samples:
            raise UsageError("--mode direct needs --traffic (a log or `specdec profile --write-redacted` output) "
                             "or a profile made with --keep-samples")
        reader = None
        records = _records_from_samples(prof)
    for rec in records:
        if not (rec.completion or rec.reasoning or rec.tool_calls) and not rec.prompt_chars:
            counters["no_text"] += 1
            continue
        pt = rec.prompt_tokens if rec.prompt_tokens is not None else (rec.prompt_chars + 3) >> 2
        ct = rec.completion_tokens if rec.completion_tokens is not None else (rec.completion_chars + 3) >> 2
        cls, _ = classify_record(rec, pt)
        turns = row_conversation(rec, args.reasoning)
        rid, key = _row_key(turns)
        yield turns, cls, _coarse_index(ct.bit_length(), OSL_EDGES), rid, key, rec.lineno
    if reader is not None:
        counters.update({f"traffic_{k}": v for k, v in reader.skipped.items()})


def _trim_to_mix(rows: list, share: dict[str, float]) -> tuple[list, int]:
    """Drop rows (largest keys first, per class) until the class mix is the target again: rows rejected by
    the gate leave their class short, and the others are cut to match rather than the mix drifting."""
    by: dict[str, list] = {}
    for e in rows:
        by.setdefault(e[2], []).append(e)
    live = {c: w for c, w in share.items() if by.get(c)}
    if not live:
        return [], 0
    z = sum(live.values())
    n = min(len(by[c]) / (w / z) for c, w in live.items())
    out = []
    for c, w in live.items():
        keep = sorted(by[c], key=lambda e: -e[0])[: int(round(n * w / z))]  # smallest keys (stored negated)
        out.extend(keep)
    return out, len(rows) - len(out)


def direct(args, prof: WorkloadProfile, gate: Gate) -> dict:
    import heapq

    out = Path(args.out)
    counters: Counter = Counter()
    # pass 1: what each cell offers (unique rows only)
    seen: set[str] = set()
    avail: Counter = Counter()
    for turns, cls, b, rid, key, line in _iter_rows(args, prof, counters):
        if rid in seen:
            counters["duplicates"] += 1
            continue
        seen.add(rid)
        avail[(cls, b)] += 1
    seen.clear()
    targets = _targets(prof)
    for (c, b), n in avail.items():
        if not any(k[0] == c for k in targets):
            counters[f"class_not_in_profile:{c}"] += n
    quotas, n_rows, notes = _quotas(targets, avail, args.rows)
    # pass 2: a uniform sample (smallest keys) of each cell's quota, redacted and gated on entry
    keep: dict[tuple[str, int], list] = {k: [] for k in quotas}
    kept_ids: Counter = Counter()
    rejects = []
    gated: dict[str, dict] = {}
    for turns, cls, b, rid, key, line in _iter_rows(args, prof, Counter()):
        q = quotas.get((cls, b), 0)
        if not q or rid in seen:
            continue
        seen.add(rid)
        heap = keep[(cls, b)]
        if len(heap) >= q and -heap[0][0] <= key:
            continue
        if not args.no_redact:
            turns = [{"role": t["role"], "content": redact(t["content"])} for t in turns]
        out_id = f"{cls}-{_row_key(turns)[0]}"
        if kept_ids[out_id]:  # identical once redacted
            counters["duplicates_after_redaction"] += 1
            continue
        try:
            gated[out_id] = gate.check(turns)
        except _Reject as rj:
            rejects.append({"id": out_id, "line": line, "class": cls, "reason": rj.reason, "detail": rj.detail,
                            "conversations": turns})
            continue
        entry = (-key, out_id, cls, turns)
        if len(heap) < q:
            heapq.heappush(heap, entry)
        else:
            kept_ids[heapq.heapreplace(heap, entry)[1]] -= 1
        kept_ids[out_id] += 1
    rows = [e for h in keep.values() for e in h]
    cls_share: dict[str, float] = {}
    for (c, _), w in targets.items():
        cls_share[c] = cls_share.get(c, 0.0) + w
    rows, trimmed = _trim_to_mix(rows, cls_share)
    if trimmed:
        notes.append(f"{trimmed} rows dropped to keep the class mix after {len(rejects)} gate rejects")
    rows.sort(key=lambda e: -e[0])  # by key: classes interleaved, deterministic
    from specdec_engine.cache import atomic_write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, "".join(json.dumps({"id": rid, "conversations": turns}, ensure_ascii=False) + "\n"
                                    for _, rid, cls, turns in rows).encode())
    rej_path = out.with_name(out.stem + ".rejects.jsonl")
    atomic_write_bytes(rej_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode())
    achieved = Counter(e[2] for e in rows)
    total = len(rows) or 1
    mask_tokens = [gated[e[1]]["mask_tokens"] for e in rows if gated[e[1]].get("mask_tokens") is not None]
    return {
        "mode": "direct", "rows": len(rows), "rows_matched_to_mix": n_rows,
        "source": str(args.traffic) if args.traffic else "profile samples",
        "redacted": not args.no_redact, "reasoning": args.reasoning,
        "target_mix": {c: round(v, 6) for c, v in sorted(cls_share.items())},
        "achieved_mix": {c: round(achieved[c] / total, 6) for c in sorted(achieved)},
        "available_unique_rows": {f"{c}/{_osl_label(b)}": n for (c, b), n in sorted(avail.items())},
        "quotas": {f"{c}/{_osl_label(b)}": n for (c, b), n in sorted(quotas.items())},
        "duplicates_dropped": counters["duplicates"] + counters["duplicates_after_redaction"],
        "records_without_text": counters["no_text"],
        "traffic_skipped": {k[len("traffic_"):]: v for k, v in counters.items() if k.startswith("traffic_")},
        "rejects": len(rejects), "rejects_by_reason": dict(Counter(r["reason"] for r in rejects)),
        "rejects_file": str(rej_path),
        "gate": {"chat_template": gate.template.origin, "tokenizer": gate.tok.path if gate.tok else None,
                 "max_length": gate.max_length if gate.tok else None,
                 "mask": "tokens" if gate.tok else "characters (no tokenizer.json beside the template)",
                 "mask_tokens_min": min(mask_tokens) if mask_tokens else None,
                 "mask_tokens_mean": round(sum(mask_tokens) / len(mask_tokens), 1) if mask_tokens else None},
        "notes": notes + [f"{k}: {v}" for k, v in counters.items() if k.startswith("class_not_in_profile")],
    }


def _osl_label(j: int) -> str:
    lo = OSL_EDGES[j]
    hi = OSL_EDGES[j + 1] if j + 1 < len(OSL_EDGES) else None
    return f"osl{lo}+" if hi is None else f"osl{lo}-{hi}"


# ---------------------------------------------------------------------------- plan mode
def plan(args, prof: WorkloadProfile, gate: Gate | None) -> dict:
    rows = args.rows or DEFAULT_PLAN_ROWS
    weights: dict[str, float] = {}
    classes_of: dict[str, dict[str, float]] = {}
    notes = []
    for cls, share in sorted(prof.content_class_mix.items(), key=lambda kv: -kv[1]):
        if not share:
            continue
        presets, note = CLASS_PRESETS.get(cls, CLASS_PRESETS["other"])
        for preset, w in presets:
            weights[preset] = weights.get(preset, 0.0) + share * w
            classes_of.setdefault(preset, {})[cls] = round(share * w, 6)
        if note:
            notes.append(f"{cls} ({share:.1%}): {note}")
    z = sum(weights.values()) or 1.0
    outdir = Path(args.out).with_suffix("").name + "_specforge"
    entries = []
    for preset, w in sorted(weights.items(), key=lambda kv: -kv[1]):
        n = max(1, round(rows * w / z))
        cmd = f"python scripts/prepare_data.py --dataset {preset} --sample-size {n} --output-path {outdir}"
        if preset == "opc":
            cmd += " --opc-subset largescale_diverse_instruct"
        entries.append({"preset": preset, "dataset": SPECFORGE_PRESETS[preset], "weight": round(w / z, 6),
                        "sample_size": n, "classes": classes_of[preset], "command": cmd,
                        "output": f"{outdir}/{preset}_train.jsonl"})
    probe = None
    if gate is not None:
        turns = [{"role": "user", "content": "Write one sentence about rivers."},
                 {"role": "assistant", "content": "Rivers carry water from the hills to the sea."}]
        try:
            probe = {"ok": True, **gate.check(turns)}
        except _Reject as rj:
            probe = {"ok": False, "reason": rj.reason, "detail": rj.detail}
    rec = prof.recommended_spec_decode
    return {
        "schema_version": "specdec_corpus_plan_v1", "mode": "plan", "target_rows": rows,
        "specforge_source": SPECFORGE_SOURCE,
        "profile_mix": prof.content_class_mix, "entries": entries,
        "merge_command": f"cat {outdir}/*_train.jsonl > {Path(args.out).with_suffix('.jsonl').name}",
        "notes": notes + ["prepare_data.py --sample-size takes the first N rows of a dataset, not a random sample",
                          "drafts match the target best when the responses are the target's own: consider "
                          "SpecForge scripts/regenerate_train_data.py on the prepared rows"],
        "recommended_spec_decode": {"method": rec.method, "rationale": rec.rationale},
        "chat_template_probe": probe,
    }


# ---------------------------------------------------------------------------- the command
def corpus_command(args) -> int:
    if args.rows is not None and args.rows < 1:
        raise UsageError(f"--rows {args.rows}: must be >= 1")
    if args.max_length < 1:
        raise UsageError(f"--max-length {args.max_length}: must be >= 1")
    prof = load_profile(args.profile)
    out = Path(args.out)
    from specdec_engine.cache import atomic_write_bytes

    if args.mode == "plan":
        gate = _gate_for(args, prof) if (args.chat_template or prof.provenance.token_counting.tokenizer_path) else None
        doc = plan(args, prof, gate)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
        sh = out.with_suffix(".sh")
        script = ["#!/usr/bin/env bash", f"# SpecForge data plan from {args.profile} ({doc['specforge_source']})",
                  "# run from a SpecForge checkout", "set -euo pipefail"]
        script += [e["command"] for e in doc["entries"]] + [doc["merge_command"]]
        atomic_write_bytes(sh, ("\n".join(script) + "\n").encode())
        for e in doc["entries"]:
            print(f"{e['preset']:<28}{e['weight']:>8.3f}{e['sample_size']:>10}  {', '.join(e['classes'])}")
        for n in doc["notes"]:
            print(f"note: {n}", file=sys.stderr)
        print(out)
        return 0
    gate = _gate_for(args, prof)
    report = direct(args, prof, gate)
    rep_path = out.with_name(out.stem + ".report.json")
    atomic_write_bytes(rep_path, (json.dumps(report, indent=2) + "\n").encode())
    print(f"rows {report['rows']}  rejects {report['rejects']}  duplicates {report['duplicates_dropped']}")
    print(f"{'class':<14}{'target':>9}{'corpus':>9}")
    for c in sorted(set(report["target_mix"]) | set(report["achieved_mix"])):
        print(f"{c:<14}{report['target_mix'].get(c, 0):>9.3f}{report['achieved_mix'].get(c, 0):>9.3f}")
    for n in report["notes"]:
        print(f"note: {n}", file=sys.stderr)
    if report["rejects"]:
        print(f"{report['rejects']} rows failed the chat-template gate: {report['rejects_file']}", file=sys.stderr)
    print(out)
    return 0 if report["rows"] else 1


def add_parser(sub) -> None:
    p = sub.add_parser("corpus", help="workload profile -> draft-training corpus (SpecForge rows or a data plan)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="workload-profile.json from specdec profile")
    p.add_argument("--out", required=True, help="corpus.jsonl (direct) or plan JSON (plan)")
    p.add_argument("--traffic", help="traffic to build rows from (any shape specdec profile reads, e.g. its "
                                     "--write-redacted output); default: the profile's --keep-samples exemplars")
    p.add_argument("--mode", choices=["direct", "plan"], default="direct")
    p.add_argument("--chat-template", help="the target's chat template: .jinja file, tokenizer_config.json or "
                                           "tokenizer folder (default: the profile's --tokenizer)")
    p.add_argument("--rows", type=int, help="rows to produce (direct: at most; plan: default 100000)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="training sequence length: assistant tokens past it do not count in the mask (2048)")
    p.add_argument("--reasoning", choices=["think-tags", "drop"], default="think-tags",
                   help="keep the response's reasoning as <think>...</think> before the answer, or drop it")
    p.add_argument("--no-redact", action="store_true", help="do not redact rows (traffic already redacted)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed traffic line")
    p.set_defaults(func=corpus_command)
