"""Generated access logs with a known class mix and known token counts (tests and the throughput benchmark).

``generate(path, n, mix)`` writes ``n`` requests whose classes follow ``mix`` and returns a
:class:`Truth`: the class and the token counts of every line, as the profiler must find them (the
counts are what the log states, or ``ceil(characters / 4)`` of the counted text when it states
nothing, i.e. the profiler's documented approximation). Texts are built from per-class templates
(questions, code in fences, rewrite instructions with the text to rewrite, JSON extraction, math
problems, reasoning traces, long documents) and filler that trips no classifier rule, so a
correct profiler recovers the mix exactly and the percentiles within the sketch's error.

``code_overlap`` (0..1) makes code answers repeat that fraction of the code in the prompt (the traffic
that n-gram/suffix drafting serves well).
"""

from __future__ import annotations

import gzip
import json
import math
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

SHAPES = ("messages", "openai", "precounted", "conversations", "prompt")

# Prose filler: no classifier marker (no editing verbs, math words, JSON words or code symbols) inside.
_WORDS = ("the river mountain people history garden music travel city morning quiet bright story family window "
          "market season village ocean forest letter journey simple warm friend evening road light house table "
          "coffee winter summer paint book school language tree cloud stone bridge harbor field voice picture "
          "festival kitchen weather animal island sunset planet museum station teacher student dinner holiday "
          "poem theater valley castle farmer baker painter singer library lantern meadow orchard canyon").split()
_TOPICS = ("gardening", "travel in Japan", "learning the piano", "baking bread", "the history of Rome",
           "training for a marathon", "saving money", "raising a puppy", "writing a novel", "camping")
_NAMES = ("parse_config", "merge_lists", "load_users", "compute_total", "render_page", "fetch_items",
          "normalize_path", "update_cache", "score_matches", "split_batches")


def _prose(rng: random.Random, chars: int) -> str:
    if chars <= 0:
        return ""
    s = " ".join(rng.choices(_WORDS, k=chars // 5 + 8))  # words average ~6 characters with the space
    while len(s) < chars:
        s += " " + " ".join(rng.choices(_WORDS, k=(chars - len(s)) // 5 + 8))
    return s[:chars]


def _code(rng: random.Random, chars: int) -> str:
    parts, n = [], 0
    while n < chars:
        name = rng.choice(_NAMES)
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
        f = (f"def {name}_{a}(items, limit={b}):\n    total = 0\n    for item in items:\n"
             f"        if item > limit:\n            total += item * {c}\n        else:\n"
             f"            total -= {a}\n    return total\n\n")
        parts.append(f)
        n += len(f)
    return "".join(parts)[:chars]


def _mutate(rng: random.Random, text: str, frac: float) -> str:
    """``text`` with about ``frac`` of its words replaced (a rewrite's output)."""
    words = text.split(" ")
    for i in range(len(words)):
        if rng.random() < frac:
            words[i] = rng.choice(_WORDS)
    return " ".join(words)


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(median * math.exp(rng.gauss(0.0, sigma))))))


# (ISL median, ISL sigma, OSL median, OSL sigma) in tokens, per class.
LENGTHS = {
    "chat": (180, 0.8, 220, 0.7),
    "code": (400, 0.8, 350, 0.7),
    "rewrite": (350, 0.6, 0, 0.0),  # the output is the input, rewritten
    "structured": (300, 0.7, 120, 0.5),
    "math": (90, 0.5, 260, 0.6),
    "reasoning": (200, 0.7, 900, 0.6),
    "long_context": (12000, 0.4, 300, 0.5),
}
SYSTEM = "You are a helpful assistant."


@dataclass
class Truth:
    """What the profiler must report for a generated log: per-line class and token counts."""

    classes: list = field(default_factory=list)
    isl: array = field(default_factory=lambda: array("q"))
    osl: array = field(default_factory=lambda: array("q"))

    def mix(self) -> dict[str, float]:
        n = len(self.classes)
        out: dict[str, float] = {}
        for c in self.classes:
            out[c] = out.get(c, 0) + 1
        return {c: k / n for c, k in out.items()}


def _approx(chars: int) -> int:
    return (chars + 3) // 4


def make_request(rng: random.Random, cls: str, code_overlap: float = 0.0) -> dict:
    """One request/response of class ``cls``: {system, user, completion, reasoning, isl_target}."""
    isl_med, isl_sig, osl_med, osl_sig = LENGTHS[cls]
    # long_context is defined by length: keep it above the threshold and everything else below it
    isl = (_lognormal(rng, isl_med, isl_sig, 8400, 200_000) if cls == "long_context"
           else _lognormal(rng, isl_med, isl_sig, 80 if cls == "rewrite" else 24, 8000))
    osl = _lognormal(rng, osl_med, osl_sig, 4, 30_000) if osl_med else 0
    body_chars = max(40, 4 * isl - len(SYSTEM) - 120)
    reasoning = ""
    if cls == "chat":
        user = f"Can you tell me about {rng.choice(_TOPICS)}? Some background: " + _prose(rng, body_chars)
        completion = "Sure. " + _prose(rng, 4 * osl)
    elif cls == "code":
        src = _code(rng, body_chars)
        user = f"Add input validation to the function below.\n```python\n{src}```"
        if code_overlap > 0:
            keep = src[: int(len(src) * code_overlap)]
            completion = f"Here is the updated code:\n```python\n{keep}{_code(rng, max(40, 4 * osl - len(keep)))}```"
        else:
            completion = f"Here is the code:\n```python\n{_code(rng, 4 * osl)}```"
    elif cls == "rewrite":
        src = _prose(rng, body_chars)
        verb = rng.choice(("Rewrite the following paragraph in a more formal tone",
                           "Please proofread this text and fix the typos",
                           "Paraphrase the passage below"))
        user = f"{verb}:\n\n{src}"
        completion = _mutate(rng, src, 0.1)
    elif cls == "structured":
        user = ("Extract the places and people from the text below and return them as JSON.\n\n"
                + _prose(rng, body_chars))
        items = ", ".join(f'"{rng.choice(_WORDS)}"' for _ in range(max(1, osl // 2)))
        completion = '{"places": [' + items + '], "people": []}'
    elif cls == "math":
        a, b, c = rng.randint(2, 40), rng.randint(1, 90), rng.randint(100, 900)
        user = f"Solve for x: {a}x + {b} = {c}. Show each step. " + _prose(rng, max(0, body_chars - 60))
        completion = f"Subtract {b} from both sides, then divide by {a}. " + _prose(rng, 4 * osl)
    elif cls == "reasoning":
        user = f"Which is the better plan for {rng.choice(_TOPICS)}? " + _prose(rng, body_chars)
        reasoning = "Let me think about the options. " + _prose(rng, 4 * osl - 200)
        completion = "The second plan. " + _prose(rng, 160)
    elif cls == "long_context":
        user = "Summarize the document below in a few sentences.\n\n" + _prose(rng, body_chars)
        completion = "The document describes " + _prose(rng, 4 * osl)
    else:
        raise ValueError(f"unknown class {cls!r}")
    return {"system": SYSTEM, "user": user, "completion": completion, "reasoning": reasoning}


def line_for(rng: random.Random, req: dict, cls: str, shape: str, ts: float | None = None) -> tuple[dict, int, int]:
    """(JSON object, isl, osl) of one request in ``shape``; isl/osl as the profiler must count them."""
    msgs = [{"role": "system", "content": req["system"]}, {"role": "user", "content": req["user"]}]
    isl = _approx(len(req["system"]) + len(req["user"]))
    osl = _approx(len(req["completion"]) + len(req["reasoning"]))
    if shape == "messages":
        obj = {"messages": msgs, "completion": req["completion"]}
        if req["reasoning"]:
            obj["reasoning"] = req["reasoning"]
    elif shape == "prompt":
        obj = {"prompt": req["user"], "completion": req["completion"]}
        isl = _approx(len(req["user"]))
        if req["reasoning"]:
            obj["reasoning"] = req["reasoning"]
    elif shape == "conversations":
        obj = {"id": f"r{rng.getrandbits(48):x}",
               "conversations": [{"role": "user", "content": req["user"]},
                                 {"role": "assistant", "content": req["completion"]}]}
        isl = _approx(len(req["user"]))
        osl = _approx(len(req["completion"]))
        if req["reasoning"]:  # ShareGPT rows have no reasoning field: label the class instead
            obj["content_class"] = cls
    elif shape == "openai":
        message = {"role": "assistant", "content": req["completion"]}
        if req["reasoning"]:
            message["reasoning_content"] = req["reasoning"]
        obj = {"request": {"model": "m", "messages": msgs},
               "response": {"id": "chatcmpl-x", "object": "chat.completion",
                            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": isl, "completion_tokens": osl,
                                      "total_tokens": isl + osl}}}
    elif shape == "precounted":
        obj = {"prompt_tokens": isl, "completion_tokens": osl, "content_class": cls}
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if ts is not None:
        obj["timestamp"] = ts
    return obj, isl, osl


def generate(path: str | Path, n: int, mix: dict[str, float], *, seed: int = 0, shapes=("messages",),
             gzip_out: bool = False, code_overlap: float = 0.0, start_ts: float | None = None,
             step_s: float = 1.0) -> Truth:
    """Write ``n`` lines to ``path`` (gzipped when ``gzip_out``); classes drawn exactly in proportion to ``mix``."""
    rng = random.Random(seed)
    total = sum(mix.values())
    # Exact counts per class (largest remainder), then shuffled: the mix is known exactly.
    quotas = {c: int(n * w / total) for c, w in mix.items()}
    for c in sorted(mix, key=lambda c: -(n * mix[c] / total - quotas[c]))[: n - sum(quotas.values())]:
        quotas[c] += 1
    order = [c for c, q in quotas.items() for _ in range(q)]
    rng.shuffle(order)
    truth = Truth()
    opener = gzip.open if gzip_out else open
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with opener(path, "wt", encoding="utf-8") as f:
        buf = []
        for i, cls in enumerate(order):
            req = make_request(rng, cls, code_overlap)
            shape = shapes[i % len(shapes)]
            ts = None if start_ts is None else start_ts + i * step_s
            obj, isl, osl = line_for(rng, req, cls, shape, ts)
            buf.append(dumps(obj))
            truth.classes.append(cls)
            truth.isl.append(isl)
            truth.osl.append(osl)
            if len(buf) >= 2048:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    return truth
