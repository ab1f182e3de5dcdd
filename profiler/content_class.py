"""The content classifier: one class per request, from cheap text signals, in a fixed order.

Classes (``CLASSES``): ``code``, ``rewrite`` (rewrite/edit of text or code the prompt supplies),
``chat``, ``long_context``, ``structured`` (JSON/tool calls), ``math``, ``reasoning``; ``other`` holds
pre-labelled classes outside this list. A pre-labelled line (``"content_class": "..."``) always wins;
its label is normalised through ``ALIASES`` (``edit`` -> ``rewrite``, ``json`` -> ``structured``,
``long-context`` -> ``long_context``, ...).

Unlabelled requests take the first rule that fires (the order puts the property that matters most
for speculative decoding first: a reasoning trace dominates the output tokens; a rewrite's output
repeats its input whatever the language):

1. ``reasoning``: the response has reasoning text (``reasoning_content``/``reasoning``) or reports
   reasoning tokens, or the completion opens with ``<think>``.
2. ``rewrite``: the request carries OpenAI's ``prediction`` (predicted outputs), or the instruction
   (the first and last 120 characters of the last user message, lower-cased) holds an editing word
   (rewrite, rephrase, paraphrase, proofread, refactor, revise, reword, edit, copyedit, typos,
   grammar, docstrings, "polish the/this/my", "type hints", "following/these changes") *and* the
   message supplies material to edit (at least 200 characters, or a code fence): "how do I fix my
   bike?" stays ``chat``, "credit" is not "edit" (words are matched whole, not as substrings).
3. ``code``: a code fence in the first 512 characters of the last user message or the first 384 of
   the completion, unless every fence is ```` ```json ````; without a fence, a density of ``( = { ;``
   of at least 3% over their first 256 + 256 characters *and* a code construct (``def f(``,
   ``#include``, ``import x``, ``function(``, ``=> {``, ``};``, ``public static``, ``</tag>``, ...).
4. ``math``: a math word in the instruction (solve, equation, integral, derivative, probability,
   calculate, theorem, polynomial, "how many", "prove that") or LaTeX (``$$``, ``\\frac``, ``\\(``, ...).
5. ``structured``: ``response_format`` json, tool calls in the response, an instruction asking for a
   format ("as JSON", "in YAML", "JSON schema", "valid JSON", ...), or a completion that starts with
   ``{`` or ``[`` or holds a ```` ```json ```` fence.
6. ``long_context``: prompt tokens >= ``LONG_CONTEXT_TOKENS`` (8,192) with none of the above
   (long documents, RAG, summaries).
7. ``chat``: everything else.

Only bounded prefixes/suffixes of the texts are read (at most ~1,300 characters in all), so the cost
per request does not grow with prompt length, and the word rules are one set intersection (about
10 us per request on the 2-core development machine). ``tests/tools/test_workload_profile.py`` checks
each rule on hand-written requests and the mix on generated logs.
"""

from __future__ import annotations

import re

CLASSES = ("chat", "code", "rewrite", "structured", "math", "reasoning", "long_context")
OTHER = "other"
ALL_CLASSES = CLASSES + (OTHER,)
LONG_CONTEXT_TOKENS = 8192
REWRITE_MIN_CHARS = 200

ALIASES = {
    "chat": "chat", "conversation": "chat", "general": "chat", "qa": "chat", "assistant": "chat",
    "code": "code", "coding": "code", "programming": "code", "codegen": "code", "code_generation": "code",
    "rewrite": "rewrite", "edit": "rewrite", "editing": "rewrite", "rewrite_edit": "rewrite",
    "code_edit": "rewrite", "refactor": "rewrite", "paraphrase": "rewrite",
    "structured": "structured", "json": "structured", "structured_output": "structured",
    "tool": "structured", "tools": "structured", "tool_use": "structured", "function_calling": "structured",
    "extraction": "structured",
    "math": "math", "mathematics": "math",
    "reasoning": "reasoning", "thinking": "reasoning", "cot": "reasoning",
    "long_context": "long_context", "longcontext": "long_context", "long": "long_context",
    "rag": "long_context", "summarization": "long_context", "summarisation": "long_context",
    "document": "long_context",
}

# The instruction's words are matched against these tables in one C-level set intersection (its
# cost does not depend on how many words there are in the tables; ``in`` scans and alternation
# regexes cost per character and per marker, and this runs on every line of the log). A word maps to
# (rule, phrases): with phrases, the word counts only if one of them is in the instruction too.
_RULE_WORDS = {
    "rewrite": {w: () for w in (
        "rewrite rewrites rewriting rewritten re-write rephrase rephrasing paraphrase paraphrasing proofread "
        "proofreading refactor refactoring revise revising reword rewording edit editing copyedit copy-edit "
        "typos grammar docstring docstrings").split()}
    | {"polish": ("polish the", "polish this", "polish my"), "hints": ("type hints",),
       "changes": ("following changes", "these changes")},
    "math": {w: () for w in (
        "solve solving equation equations integral integrals derivative derivatives probability calculate "
        "theorem polynomial polynomials").split()}
    | {"many": ("how many",), "prove": ("prove that", "prove the")},
    "structured": {
        "json": ("as json", "in json", "into json", "json format", "valid json", "json object", "json schema",
                 "return json", "output json", "only json", "strict json", "json only"),
        "yaml": ("as yaml", "in yaml", "into yaml", "yaml format", "valid yaml"),
        "csv": ("as csv", "in csv", "into csv", "csv format"),
        "xml": ("as xml", "in xml", "into xml", "xml format"),
        "schema": ("following schema", "this schema", "the schema below")},
}
_PUNCT = ("", ":", ",", ".", "?", "!", ";", ")")
_WORD_RULES: dict[str, tuple[str, tuple]] = {}
for _rule, _table in _RULE_WORDS.items():
    for _w, _phrases in _table.items():
        for _v in [_w + p for p in _PUNCT] + ["(" + _w, '"' + _w, "'" + _w, "*" + _w]:
            _WORD_RULES[_v] = (_rule, _phrases)
_WORD_KEYS = frozenset(_WORD_RULES)
_LATEX = ("\\frac", "\\sqrt", "\\(", "\\[", "\\int", "\\sum", "\\cdot", "\\times", "\\pi")
_CODE = re.compile(
    r"def \w+\(|#include|^\s*import [\w.]+|^\s*from [\w.]+ import|function\s*\w*\(|=> *\{|\};|public static|"
    r"console\.log|std::|fn \w+\(|package main|SELECT .* FROM|<div|</\w+>|\)\s*\{\s*$|^\s*return\b", re.M)
CODE_SYMBOL_DENSITY = 0.03  # "(", "=", "{", ";" per character over the first 256 + 256 characters
INSTRUCTION_CHARS = 120     # the instruction: the first and last 120 characters of the last user message
FENCE_USER_CHARS = 512
FENCE_COMPLETION_CHARS = 384
_FENCE_LANG_JSON = "```json"


def _rules_hit(ins: str) -> tuple[bool, bool, bool]:
    """(rewrite, math, structured) word rules that fire on the lower-cased instruction ``ins``."""
    rewrite = math = struct = False
    for w in _WORD_KEYS.intersection(ins.split()):
        rule, phrases = _WORD_RULES[w]
        if phrases and not any(p in ins for p in phrases):
            continue
        if rule == "rewrite":
            rewrite = True
        elif rule == "math":
            math = True
        else:
            struct = True
    if not math and ("$$" in ins or ("\\" in ins and any(t in ins for t in _LATEX))):
        math = True
    return rewrite, math, struct


def normalize_label(label: str) -> str:
    """A pre-labelled class in the vocabulary of ``CLASSES`` (``other`` when unknown)."""
    key = label.strip().lower().replace("-", "_").replace("/", "_").replace(" ", "_")
    return ALIASES.get(key, OTHER)


def classify(*, user: str, completion: str, prompt_tokens: int, reasoning: bool = False,
             prediction: bool = False, json_mode: bool = False, tool_calls: bool = False) -> str:
    """The class of an unlabelled request (rules 1-7 of the module docstring)."""
    return _classify(user, completion, prompt_tokens, reasoning, prediction, json_mode, tool_calls)


def _classify(user: str, completion: str, prompt_tokens: int, reasoning, prediction, json_mode, tool_calls) -> str:
    if reasoning or (completion[:1] in ("<", " ", "\n") and completion[:16].lstrip().startswith("<think>")):
        return "reasoning"
    if prediction:
        return "rewrite"
    n = len(user)
    ins = ("\n" + user[:INSTRUCTION_CHARS] + "\n" + user[-INSTRUCTION_CHARS:] if n > 2 * INSTRUCTION_CHARS
           else user).lower()
    rewrite, math, struct = _rules_hit(ins)
    head = user[:FENCE_USER_CHARS]
    ch = completion[:FENCE_COMPLETION_CHARS]
    fence = "```" in head or "```" in ch
    if rewrite and (n >= REWRITE_MIN_CHARS or fence):
        return "rewrite"
    if fence:
        total = head.count("```") + ch.count("```")
        jsonish = head.count(_FENCE_LANG_JSON) + ch.count(_FENCE_LANG_JSON)
        # an opening ```json and its closing ``` make two fences: all fences are JSON ones
        if not (jsonish and total <= 2 * jsonish):
            return "code"
    else:
        blob = head[:256] + "\n" + ch[:256]
        if "(" in blob or "{" in blob:  # prose without brackets skips the counting
            sym = blob.count("(") + blob.count("=") + blob.count("{") + blob.count(";")
            if sym >= 4 and sym >= CODE_SYMBOL_DENSITY * len(blob) and "\\" not in blob and _CODE.search(blob):
                return "code"
    if math:
        return "math"
    if struct or json_mode or tool_calls:
        return "structured"
    c0 = ch.lstrip()[:1]
    if c0 == "{" or c0 == "[" or _FENCE_LANG_JSON in ch:
        return "structured"
    if prompt_tokens >= LONG_CONTEXT_TOKENS:
        return "long_context"
    return "chat"


def classify_record(rec, prompt_tokens: int) -> tuple[str, bool]:
    """(class, pre-labelled?) for a :class:`specdec_profiler.traffic.Record` after ``scan``."""
    if rec.label:
        return normalize_label(rec.label), True
    return _classify(rec.last_user, rec.completion, prompt_tokens, rec.reasoning or rec.reasoning_tokens,
                     rec.prediction, rec.json_mode, rec.tool_calls), False
