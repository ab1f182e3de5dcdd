"""Access logs in the shapes operators have, read as one normalized :class:`Record` per request.

One JSON object per line (``.gz`` is detected by its magic bytes, not its name):

========================  ===================================================================================
shape                     recognised by
========================  ===================================================================================
``messages``              ``{"messages": [...], "completion": "..."}`` (also ``response``/``output``/``answer``
                          as the completion text, ``reasoning``/``reasoning_content``, ``tool_calls``, ``usage``)
``prompt``                ``{"prompt": "...", "completion": "..."}`` (completions API)
``conversations``         SpecForge/ShareGPT rows ``{"conversations": [{"role"|"from", "content"|"value"}]}``;
                          the last assistant turn is the completion
``precounted``            ``{"prompt_tokens": N, "completion_tokens": M, "content_class": "..."}``
                          (``input_tokens``/``output_tokens`` accepted), no text at all
``openai``                ``{"request": {...}, "response": {...}}``: ``request.messages`` (or ``prompt``),
                          ``response.choices[].message.{content, reasoning_content|reasoning, tool_calls}``
                          (or ``choices[].text``), ``response.usage``; OpenAI Batch API lines
                          (``response.body``, ``request.body``) too
``sglang``                SGLang ``--log-requests --log-requests-format json`` lines
                          (``{"event": "request.finished", "rid", "obj": {"text"...}, "out": {"text",
                          "meta_info": {"prompt_tokens", "completion_tokens"}}}``); ``request.received``
                          events are skipped (counted), and the text format (``Finish: obj=..., out=...``)
                          is read for its token counts and texts
``vllm``                  vLLM ``--enable-log-requests --enable-log-outputs`` text lines (or the same messages
                          inside a JSON log line's ``message``), joined by request id: ``Request <id> details:
                          prompt: ..., prompt_token_ids: [...]`` (DEBUG level), ``Request <id> JSON body:``,
                          ``Generated response <id> details: output_token_ids: [...]`` and
                          ``Generated response <id>: output: ..., finish_reason: ...``; streaming deltas are
                          skipped. Formats from vllm 0.32 ``entrypoints/serve/utils/request_logger.py`` and
                          SGLang ``srt/utils/request_logger.py``.
========================  ===================================================================================

Counted, not dropped: multi-part content (every text part; image/audio parts are counted in
``non_text_parts``, their tokens are not estimated), tool definitions sent with the request, tool calls
(name + arguments) in the response and in the history, tool results, and reasoning fields.
Token counts given by the log (``usage``, pre-counted fields, SGLang ``meta_info``, vLLM token id lists)
win over counting text: they are the served model's own counts.

A line that cannot be read is skipped and counted under a reason; :data:`MALFORMED` reasons make
``--strict`` stop at the first one (a :class:`UsageError` naming file, line and reason). The other
reasons (blank lines, events without a completion, lines outside ``--window``) are never fatal.
Memory stays bounded: the vLLM joiner keeps at most ``MAX_PENDING`` open requests.
"""

from __future__ import annotations

import ast
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import sys
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UsageError

try:  # the fastest decoder installed wins; all accept bytes
    import orjson as _fastjson

    _loads = _fastjson.loads
    _DECODE_ERRORS: tuple = (ValueError,)
    JSON_BACKEND = "orjson"
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import msgspec as _msgspec

        _loads = _msgspec.json.decode
        _DECODE_ERRORS = (ValueError, _msgspec.DecodeError)
        JSON_BACKEND = "msgspec"
    except ImportError:
        _loads = json.loads
        _DECODE_ERRORS = (ValueError,)
        JSON_BACKEND = "json"

MALFORMED = frozenset({
    "invalid_json", "not_an_object", "unknown_shape", "bad_messages", "bad_completion", "bad_token_count",
    "bad_content_class", "bad_response", "sglang_unparseable", "vllm_unparseable",
})
MAX_PENDING = 100_000
EXAMPLES_PER_REASON = 5


class SkipLine(Exception):
    """Raised by a shape parser: this line gives no record (``reason`` names why, ``detail`` is for --strict)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Record:
    """One request/response, whatever its log shape. Texts are references into the decoded line (no copies)."""

    shape: str
    messages: list | None = None      # the request's chat messages, as logged
    prompt: str | None = None         # completions-API prompt, or the engine-rendered prompt (vLLM/SGLang logs)
    completion: str = ""
    reasoning: str = ""
    tool_calls: list | None = None    # the response's tool calls
    tools: list | None = None         # tool definitions sent with the request
    prompt_tokens: int | None = None  # counts given by the log (exact); None: count the text
    completion_tokens: int | None = None
    reasoning_tokens: int = 0         # reasoning tokens reported by the log (the text may be hidden)
    label: str | None = None          # pre-labelled content class
    prediction: bool = False          # the request carried OpenAI's `prediction` (predicted outputs)
    json_mode: bool = False           # response_format json_object / json_schema
    timestamp: float | None = None    # epoch seconds (only looked up when a --window is set)
    lineno: int = 0
    # filled by scan(): approximate-counting inputs and classifier inputs
    prompt_chars: int = 0
    completion_chars: int = 0
    last_user: str = ""
    system: str = ""
    non_text_parts: int = 0


# ---------------------------------------------------------------------------- text helpers
def content_text(content) -> str:
    """The text of a message ``content``: a string, or the text parts of a multi-part list joined."""
    if content is None:
        return ""
    if type(content) is str:
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if type(part) is str:
                out.append(part)
            elif isinstance(part, dict):
                t = part.get("text")
                if type(t) is str:
                    out.append(t)
        return "\n".join(out)
    raise SkipLine("bad_messages", f"content is a {type(content).__name__}")


def _tool_calls_text(calls) -> str:
    """``name(arguments)`` of each tool call (OpenAI ``tool_calls`` or legacy ``function_call``)."""
    if not calls:
        return ""
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        return str(calls)
    out = []
    for c in calls:
        if not isinstance(c, dict):
            out.append(str(c))
            continue
        f = c.get("function", c)
        if isinstance(f, dict):
            args = f.get("arguments", "")
            out.append(f"{f.get('name', '')}({args if type(args) is str else json.dumps(args)})")
        else:
            out.append(str(f))
    return "\n".join(out)


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def scan(rec: Record) -> Record:
    """Fill the character counts, last user message and system prompt of ``rec`` (one pass, no copies).

    The character counts feed the approximate token count (4 characters per token) and are what
    tokens are counted from: every text part, tool call, tool result and reasoning field.
    """
    chars = 0
    last_user = ""
    system = ""
    nontext = 0
    msgs = rec.messages
    if msgs is not None:
        for m in msgs:
            if type(m) is not dict:
                raise SkipLine("bad_messages", "a message is not an object")
            c = m.get("content")
            if type(c) is str:
                text = c
            else:
                text = content_text(c)
                if c:
                    nontext += sum(1 for p in c if isinstance(p, dict) and type(p.get("text")) is not str)
            chars += len(text)
            role = m.get("role")
            if role == "user":
                last_user = text
            elif role == "system" or role == "developer":
                system = text
            if "tool_calls" in m or "function_call" in m:
                chars += len(_tool_calls_text(m.get("tool_calls") or m.get("function_call")))
            r = m.get("reasoning_content") or m.get("reasoning")
            if type(r) is str:
                chars += len(r)
    if rec.prompt:
        chars += len(rec.prompt)
        if not last_user:
            last_user = rec.prompt
    if rec.tools:
        chars += len(_dumps(rec.tools))
    rec.prompt_chars = chars
    rec.last_user = last_user
    rec.system = system
    rec.non_text_parts = nontext
    out = len(rec.completion) + len(rec.reasoning)
    if rec.tool_calls:
        out += len(_tool_calls_text(rec.tool_calls))
    rec.completion_chars = out
    return rec


def prompt_text(rec: Record) -> str:
    """All counted prompt text joined (tool definitions, messages, tool calls, reasoning, raw prompt)."""
    parts = []
    if rec.tools:
        parts.append(_dumps(rec.tools))
    for m in rec.messages or ():
        parts.append(content_text(m.get("content")))
        if m.get("tool_calls") or m.get("function_call"):
            parts.append(_tool_calls_text(m.get("tool_calls") or m.get("function_call")))
        r = m.get("reasoning_content") or m.get("reasoning")
        if type(r) is str:
            parts.append(r)
    if rec.prompt:
        parts.append(rec.prompt)
    return "\n".join(p for p in parts if p)


def completion_text(rec: Record) -> str:
    """Reasoning, answer and tool calls of the response joined (what the engine generated)."""
    return "\n".join(p for p in (rec.reasoning, rec.completion, _tool_calls_text(rec.tool_calls)) if p)


# ---------------------------------------------------------------------------- shape parsers
def _count(v, field: str) -> int | None:
    if v is None:
        return None
    if type(v) is int and v >= 0:
        return v
    if type(v) is float and v >= 0 and v == int(v):
        return int(v)
    raise SkipLine("bad_token_count", f"{field} is {v!r}, not a non-negative integer")


def _str(v, field: str) -> str:
    if v is None:
        return ""
    if type(v) is str:
        return v
    if isinstance(v, list):  # multi-part content used as a completion
        return content_text(v)
    raise SkipLine("bad_completion", f"{field} is a {type(v).__name__}, not a string")


def _label(obj: dict) -> str | None:
    v = obj.get("content_class")
    if v is None or type(v) is str:
        return v or None
    raise SkipLine("bad_content_class", f"content_class is {v!r}")


def _usage(rec: Record, usage) -> None:
    if isinstance(usage, dict):
        p = _count(usage.get("prompt_tokens", usage.get("input_tokens")), "usage.prompt_tokens")
        c = _count(usage.get("completion_tokens", usage.get("output_tokens")), "usage.completion_tokens")
        if p is not None:
            rec.prompt_tokens = p
        if c is not None:
            rec.completion_tokens = c


def _request_fields(rec: Record, req: dict) -> None:
    msgs = req.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list):
            raise SkipLine("bad_messages", "messages is not a list")
        rec.messages = msgs
    p = req.get("prompt")
    if p is not None:
        if type(p) is str:
            rec.prompt = p
        elif isinstance(p, list) and all(type(x) is str for x in p):
            rec.prompt = "\n".join(p)
        elif isinstance(p, list) and rec.messages is None and all(isinstance(x, dict) for x in p):
            rec.messages = p  # some loggers put chat messages under "prompt"
        else:
            raise SkipLine("bad_messages", "prompt is neither a string nor a list of strings")
    tools = req.get("tools") or req.get("functions")
    if tools:
        rec.tools = tools if isinstance(tools, list) else [tools]
    if req.get("prediction"):
        rec.prediction = True
    rf = req.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        rec.json_mode = True


def _choices(rec: Record, resp: dict) -> None:
    choices = resp.get("choices")
    if choices is None:
        if "output_text" in resp:  # Responses API convenience field
            rec.completion = _str(resp.get("output_text"), "response.output_text")
        return
    if not isinstance(choices, list):
        raise SkipLine("bad_response", "response.choices is not a list")
    texts, reasoning, calls = [], [], []
    for ch in choices:
        if not isinstance(ch, dict):
            raise SkipLine("bad_response", "a choice is not an object")
        msg = ch.get("message") or ch.get("delta")
        if isinstance(msg, dict):
            texts.append(_str(msg.get("content"), "message.content"))
            r = msg.get("reasoning_content") or msg.get("reasoning")
            if r:
                reasoning.append(_str(r, "message.reasoning_content"))
            tc = msg.get("tool_calls") or msg.get("function_call")
            if tc:
                calls.extend(tc if isinstance(tc, list) else [tc])
        else:
            texts.append(_str(ch.get("text"), "choices[].text"))
    rec.completion = "\n".join(t for t in texts if t) if len(texts) != 1 else texts[0]
    rec.reasoning = "\n".join(reasoning)
    rec.tool_calls = calls or None


def parse_openai(obj: dict) -> Record:
    rec = Record("openai")
    req = obj.get("request")
    if isinstance(req, dict):
        if isinstance(req.get("body"), dict) and "messages" not in req:
            req = req["body"]  # Batch API input line
        _request_fields(rec, req)
    elif req is not None:
        raise SkipLine("bad_messages", "request is not an object")
    resp = obj.get("response")
    if isinstance(resp, dict):
        if isinstance(resp.get("body"), dict) and "choices" not in resp:
            status = resp.get("status_code")
            if isinstance(status, int) and status >= 400:
                raise SkipLine("error_response")
            resp = resp["body"]
        if resp.get("error"):
            raise SkipLine("error_response")
        _choices(rec, resp)
        _usage(rec, resp.get("usage"))
        usage = resp.get("usage")
        details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
        if isinstance(details, dict) and type(details.get("reasoning_tokens")) is int:
            rec.reasoning_tokens = details["reasoning_tokens"]  # hidden reasoning: counted, text not logged
    elif resp is not None:
        rec.completion = _str(resp, "response")
    else:
        raise SkipLine("bad_response", "no response")
    _usage(rec, obj.get("usage"))
    _precount(rec, obj)
    rec.label = _label(obj)
    return rec


def _precount(rec: Record, obj: dict) -> None:
    p = obj.get("prompt_tokens", obj.get("input_tokens"))
    c = obj.get("completion_tokens", obj.get("output_tokens"))
    if p is not None:
        rec.prompt_tokens = _count(p, "prompt_tokens")
    if c is not None:
        rec.completion_tokens = _count(c, "completion_tokens")


def parse_messages(obj: dict) -> Record:
    rec = Record("messages" if "messages" in obj else "prompt")
    _request_fields(rec, obj)
    comp = obj.get("completion")
    if comp is None:
        for k in ("response", "output", "answer"):
            if k in obj:
                comp = obj[k]
                break
    if isinstance(comp, dict):  # a chat message object
        rec.reasoning = _str(comp.get("reasoning_content") or comp.get("reasoning"), "completion.reasoning")
        rec.tool_calls = comp.get("tool_calls") or None
        comp = comp.get("content")
    rec.completion = _str(comp, "completion")
    r = obj.get("reasoning_content") or obj.get("reasoning")
    if r:
        rec.reasoning = _str(r, "reasoning")
    tc = obj.get("tool_calls")
    if tc:
        rec.tool_calls = tc if isinstance(tc, list) else [tc]
    _usage(rec, obj.get("usage"))
    _precount(rec, obj)
    rec.label = _label(obj)
    return rec


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                   "tool": "tool", "function": "tool"}


def parse_conversations(obj: dict) -> Record:
    conv = obj.get("conversations")
    if not isinstance(conv, list):
        raise SkipLine("bad_messages", "conversations is not a list")
    msgs = []
    for turn in conv:
        if not isinstance(turn, dict):
            raise SkipLine("bad_messages", "a turn is not an object")
        role = turn.get("role") or _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise SkipLine("bad_messages", f"unknown speaker {turn.get('from')!r}")
        msgs.append({"role": role, "content": turn.get("content", turn.get("value"))})
    rec = Record("conversations")
    if msgs and msgs[-1]["role"] == "assistant":
        rec.completion = _str(msgs[-1]["content"], "conversations[-1].content")
        msgs = msgs[:-1]
    rec.messages = msgs
    _precount(rec, obj)
    rec.label = _label(obj)
    return rec


def parse_precounted(obj: dict) -> Record:
    rec = Record("precounted")
    _precount(rec, obj)
    if rec.prompt_tokens is None or rec.completion_tokens is None:
        raise SkipLine("bad_token_count", "pre-counted line needs both prompt_tokens and completion_tokens")
    rec.label = _label(obj)
    return rec


def _sglang_pair(obj_in, out) -> Record:
    rec = Record("sglang")
    if not isinstance(out, dict):
        raise SkipLine("sglang_unparseable", "out is not an object")
    text = obj_in.get("text") if isinstance(obj_in, dict) else None
    if type(text) is str:
        rec.prompt = text
    if isinstance(obj_in, dict) and isinstance(obj_in.get("messages"), list):
        rec.messages = obj_in["messages"]
    rec.completion = _str(out.get("text"), "out.text")
    meta = out.get("meta_info")
    if isinstance(meta, dict):
        rec.prompt_tokens = _count(meta.get("prompt_tokens"), "meta_info.prompt_tokens")
        rec.completion_tokens = _count(meta.get("completion_tokens"), "meta_info.completion_tokens")
        if type(meta.get("reasoning_tokens")) is int:
            rec.reasoning_tokens = meta["reasoning_tokens"]
    if rec.prompt_tokens is None and isinstance(obj_in, dict) and isinstance(obj_in.get("input_ids"), list) \
            and "..." not in obj_in["input_ids"]:
        rec.prompt_tokens = len(obj_in["input_ids"])
    if rec.completion_tokens is None and isinstance(out.get("output_ids"), list) and "..." not in out["output_ids"]:
        rec.completion_tokens = len(out["output_ids"])
    return rec


def parse_sglang(obj: dict) -> Record | list[Record]:
    event = obj.get("event")
    if event != "request.finished":
        raise SkipLine("sglang_request_received" if event == "request.received" else "sglang_other_event")
    obj_in, out = obj.get("obj"), obj.get("out")
    if isinstance(out, list):  # a batch request: one output per prompt
        texts = obj_in.get("text") if isinstance(obj_in, dict) else None
        recs = []
        for i, o in enumerate(out):
            one = dict(obj_in) if isinstance(obj_in, dict) else {}
            one["text"] = texts[i] if isinstance(texts, list) and i < len(texts) else None
            one.pop("input_ids", None)
            recs.append(_sglang_pair(one, o))
        return recs
    rec = _sglang_pair(obj_in, out)
    rec.label = _label(obj)
    return rec


_PY_STR = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_SGL_TEXT_IN = re.compile(r"\btext=" + _PY_STR)
_SGL_TEXT_OUT = re.compile(r"'text': " + _PY_STR)
_SGL_PT = re.compile(r"'prompt_tokens': (\d+)")
_SGL_CT = re.compile(r"'completion_tokens': (\d+)")


def parse_sglang_text(line: str) -> Record:
    """SGLang's text format: ``Finish: obj=GenerateReqInput(...), out={...'meta_info': {...}}``."""
    i = line.find("Finish: obj=")
    j = line.find(", out={", i)
    if j < 0:
        raise SkipLine("sglang_unparseable", "Finish line without out={...}")
    head, tail = line[i:j], line[j:]
    pt, ct = _SGL_PT.search(tail), _SGL_CT.search(tail)
    if not (pt and ct):
        raise SkipLine("sglang_unparseable", "no prompt_tokens/completion_tokens in meta_info")
    rec = Record("sglang", prompt_tokens=int(pt.group(1)), completion_tokens=int(ct.group(1)))
    for rx, attr in ((_SGL_TEXT_IN, "prompt"), (_SGL_TEXT_OUT, "completion")):
        m = rx.search(head if attr == "prompt" else tail)
        if m:
            try:
                setattr(rec, attr, ast.literal_eval(m.group(1)))
            except (ValueError, SyntaxError):
                pass
    return rec


class VllmJoiner:
    """Joins vLLM's request and response log lines by request id, keeping at most ``MAX_PENDING`` open."""

    _RID_END = (" details:", " JSON body:", ":")

    def __init__(self, max_pending: int = MAX_PENDING):
        self.pending: OrderedDict[str, dict] = OrderedDict()
        self.max_pending = max_pending
        self.evicted = 0

    def _slot(self, rid: str) -> dict:
        slot = self.pending.get(rid)
        if slot is None:
            slot = self.pending[rid] = {}
            if len(self.pending) > self.max_pending:
                self.pending.popitem(last=False)
                self.evicted += 1
        return slot

    @staticmethod
    def _literal(s: str):
        try:
            return ast.literal_eval(s)
        except (ValueError, SyntaxError):
            raise SkipLine("vllm_unparseable", "not a Python string literal") from None

    def feed(self, msg: str) -> Record | None:
        """One vLLM log message; a :class:`Record` when it completes a request, else None."""
        i = msg.find("Generated response ")
        if i >= 0:
            rest = msg[i + len("Generated response "):]
            if " (streaming delta)" in rest[:200]:
                raise SkipLine("vllm_streaming_delta")
            k = rest.find(" details: output_token_ids: ")
            if k >= 0:
                ids = rest[k + len(" details: output_token_ids: "):].strip()
                rid = rest[:k].replace(" (streaming complete)", "")
                if ids.startswith("["):
                    self._slot(rid)["completion_tokens"] = 0 if ids == "[]" else ids.count(",") + 1
                return None
            k = rest.find(": output: ")
            f = rest.rfind(", finish_reason: ")
            if k < 0 or f < k:
                raise SkipLine("vllm_unparseable", "Generated response line without output/finish_reason")
            rid = rest[:k].replace(" (streaming complete)", "")
            output = self._literal(rest[k + len(": output: "):f])
            slot = self.pending.pop(rid, None)
            if slot is None or ("prompt" not in slot and "body" not in slot and "prompt_tokens" not in slot):
                raise SkipLine("vllm_response_without_prompt",
                               "no 'Request ... details' line (vLLM logs prompts at --log-level DEBUG)")
            rec = Record("vllm", prompt=slot.get("prompt"), prompt_tokens=slot.get("prompt_tokens"),
                         completion_tokens=slot.get("completion_tokens"), completion=output if type(output) is str
                         else str(output))
            body = slot.get("body")
            if isinstance(body, dict):
                _request_fields(rec, body)
                if rec.messages is not None and slot.get("prompt") is not None:
                    rec.prompt = None  # the messages are the better text; the rendered prompt repeats them
            return rec
        i = msg.find("Request ")
        if i < 0:
            return None
        rest = msg[i + len("Request "):]
        k = rest.find(" details: prompt: ")
        if k >= 0:
            rid = rest[:k]
            t = rest.rfind(", prompt_token_ids: ")
            if t < 0:
                raise SkipLine("vllm_unparseable", "details line without prompt_token_ids")
            slot = self._slot(rid)
            prompt = self._literal(rest[k + len(" details: prompt: "):t])
            if type(prompt) is str:
                slot["prompt"] = prompt
            ids = rest[t + len(", prompt_token_ids: "):]
            e = ids.find("]")
            if ids.startswith("[") and e >= 0:
                slot["prompt_tokens"] = 0 if e == 1 else ids[:e].count(",") + 1
            return None
        k = rest.find(" JSON body: ")
        if k >= 0:
            try:
                body = json.loads(rest[k + len(" JSON body: "):])
            except ValueError:
                return None  # truncated by --max-log-len: the details line still gives the prompt
            self._slot(rest[:k])["body"] = body
        return None


# ---------------------------------------------------------------------------- timestamps and --window
def parse_time(v) -> float | None:
    """Epoch seconds from a number (seconds or milliseconds) or an ISO 8601 string (naive = UTC)."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) / 1000.0 if v > 1e12 else float(v)
    if isinstance(v, str):
        s = v.strip()
        try:
            return parse_time(float(s))
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    return None


_TIME_KEYS = ("timestamp", "ts", "time", "created_at", "request_time", "start_time", "created")


def record_time(obj: dict) -> float | None:
    for k in _TIME_KEYS:
        if k in obj:
            return parse_time(obj[k])
    for k in ("response", "request"):
        sub = obj.get(k)
        if isinstance(sub, dict):
            if isinstance(sub.get("body"), dict):
                sub = sub["body"]
            if "created" in sub:
                return parse_time(sub["created"])
    return None


def parse_window(text: str) -> tuple[float | None, float | None]:
    """``START,END`` (ISO 8601 or epoch seconds; either side may be empty) -> epoch seconds [start, end)."""
    if text.count(",") != 1:
        raise UsageError(f"--window {text!r}: expected START,END (ISO 8601 or epoch seconds; one side may be empty)")
    out = []
    for side, raw in zip(("START", "END"), text.split(",")):
        raw = raw.strip()
        if not raw:
            out.append(None)
            continue
        t = parse_time(raw)
        if t is None:
            raise UsageError(f"--window {text!r}: {side} {raw!r} is neither ISO 8601 nor epoch seconds")
        out.append(t)
    if out[0] is not None and out[1] is not None and out[0] >= out[1]:
        raise UsageError(f"--window {text!r}: START must be before END")
    return out[0], out[1]


# ---------------------------------------------------------------------------- the reader
class _Hasher:
    """sha256 of the file's bytes in a helper thread (hashlib releases the GIL on large buffers), one
    buffer behind the reader: hashing a multi-GB log overlaps with parsing it instead of adding to it."""

    def __init__(self):
        self.h = hashlib.sha256()
        self._pool = None
        self._pending = None

    def update(self, data: bytes) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        if self._pending is not None:
            self._pending.result()  # at most one buffer waits: memory stays bounded
        self._pending = self._pool.submit(self.h.update, data)

    def hexdigest(self) -> str:
        self.close()
        return self.h.hexdigest()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _HashingRaw(io.RawIOBase):
    """A raw file whose reads feed a :class:`_Hasher` (under a GzipFile: the compressed bytes are hashed)."""

    def __init__(self, f, hasher: _Hasher):
        self.f = f
        self.hasher = hasher
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.hasher.update(bytes(memoryview(b)[:n]))  # the caller reuses b
            self.pos += n
        return n or 0


def _open_raw(path: str | Path, flag: str = "--in"):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: no such file")
    try:
        raw = open(p, "rb", buffering=0)
    except OSError as err:
        raise UsageError(f"{flag} {p}: cannot read ({err.strerror})") from None
    magic = raw.read(2)
    raw.seek(0)
    return raw, magic == b"\x1f\x8b"


def open_log(path: str | Path):
    """A binary reader of the log's (decompressed) bytes; UsageError if it cannot be opened."""
    raw, gz = _open_raw(path)
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    return gzip.GzipFile(fileobj=buffered) if gz else buffered


def _is_vllm_message(s: str) -> bool:
    return "Generated response " in s or ("Request " in s and (" details: prompt: " in s or " JSON body: " in s))


_TEXT_LOG_MARKERS = (b"Finish: obj=", b"Receive: obj=", b"Generated response ", b" details: prompt: ", b" JSON body: ")


def looks_like_vllm_text_log(path: str | Path, probe: int = 1 << 16) -> bool:
    """True when the first 64 KiB hold vLLM request-log lines (they must be joined in order: no parallel chunks)."""
    with open_log(path) as f:
        head = f.read(probe)
    return b"Generated response " in head or b" details: prompt: " in head


CHUNK_BYTES = 8 << 20


class LogChunks:
    """The log as (first line number, chunk) pairs of whole lines, ~``CHUNK_BYTES`` each; hashes the file.

    A chunk is a ``bytes`` blob of whole lines (``as_lines=False``: what worker processes receive) or the
    list of its lines (``as_lines=True``: no copy of the data at all). Boundaries depend only on the
    file, so the profile is the same whatever the number of workers. ``sha256``, ``bytes`` (as stored),
    ``gzipped`` and ``lines`` are set once iteration ends.
    """

    def __init__(self, path: str | Path, chunk_bytes: int | None = None, on_progress=None, as_lines: bool = False,
                 as_ranges: bool = False):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes or CHUNK_BYTES
        self.on_progress = on_progress
        self.as_lines = as_lines
        self.as_ranges = as_ranges  # plain files: yield (offset, length) for workers to read themselves
        self.sha256: str | None = None
        self.bytes = 0
        self.gzipped = False
        self.lines = 0

    def __iter__(self) -> Iterator[tuple[int, bytes | list[bytes]]]:
        raw, self.gzipped = _open_raw(self.path)
        hasher = _Hasher()
        if self.gzipped:
            hraw = _HashingRaw(raw, hasher)
            src = gzip.GzipFile(fileobj=io.BufferedReader(hraw, buffer_size=1 << 20))
            read, where = src.read, (lambda: hraw.pos)
        else:
            src, pos = None, [0]

            def read(n: int) -> bytes:
                data = raw.read(n)
                while data and len(data) < n:  # short reads would move chunk boundaries
                    more = raw.read(n - len(data))
                    if not more:
                        break
                    data += more
                if data:
                    hasher.update(data)  # bytes are immutable: hashed without a copy
                    pos[0] += len(data)
                return data

            def where() -> int:
                return pos[0]
        lineno, carry, n_chunk = 1, b"", self.chunk_bytes
        ranges = self.as_ranges and not self.gzipped
        base = 0  # file offset where `carry` starts (ranges mode)
        try:
            while True:
                data = read(n_chunk)
                if not data:
                    break
                if ranges:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        carry += data
                        continue
                    length = len(carry) + cut
                    yield lineno, (base, length)
                    lineno += data.count(b"\n", 0, cut)
                    base += length
                    carry = data[cut:]
                elif self.as_lines:
                    lines = data.split(b"\n")
                    if carry:
                        lines[0] = carry + lines[0]
                    carry = lines.pop()  # the partial last line (b"" when data ends with a newline)
                    if lines:
                        yield lineno, lines
                        lineno += len(lines)
                else:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        carry += data
                        continue
                    blob = (carry + data[:cut]) if carry else (data if cut == len(data) else data[:cut])
                    carry = data[cut:]
                    yield lineno, blob
                    lineno += blob.count(b"\n")
                if self.on_progress is not None:
                    self.on_progress(where())
            if carry:  # a last line without a newline
                yield lineno, ((base, len(carry)) if ranges else [carry] if self.as_lines else carry)
                lineno += 1
        except (OSError, EOFError, zlib.error) as err:
            raise UsageError(f"--in {self.path}: unreadable after line {lineno - 1} ({err})") from None
        finally:
            if src is not None:
                src.close()
            raw.close()
            hasher.close()
        self.lines = lineno - 1
        self.sha256 = hasher.hexdigest()
        self.bytes = where()
        if self.on_progress is not None:
            self.on_progress(self.bytes)


class NeedsSequential(Exception):
    """A parallel worker met vLLM text-log lines, which must be joined across the whole file in order."""


class LineParser:
    """Lines -> :class:`Record`, counting what it skips (and why). State: the vLLM joiner and the counters.

    ``window`` is ``(start, end)`` epoch seconds (either None); records without a timestamp are skipped
    as ``no_timestamp`` when a window is set. With ``sequential=False`` (a parallel worker) a vLLM
    text-log line raises :class:`NeedsSequential`.
    """

    def __init__(self, path: str | Path = "", *, strict: bool = False, window: tuple | None = None,
                 sequential: bool = True):
        self.path = str(path)
        self.strict = strict
        self.window = window if window and (window[0] is not None or window[1] is not None) else None
        self.sequential = sequential
        self.joiner = VllmJoiner()
        self.text_log = False
        self.records = 0
        self.skipped: Counter = Counter()
        self.examples: dict[str, list[int]] = {}
        self.shapes: Counter = Counter()

    def stats(self) -> tuple:
        return self.records, self.skipped, self.examples, self.shapes

    def merge_stats(self, stats: tuple) -> None:
        records, skipped, examples, shapes = stats
        self.records += records
        self.skipped.update(skipped)
        self.shapes.update(shapes)
        for k, v in examples.items():
            self.examples[k] = sorted(self.examples.get(k, []) + v)[:EXAMPLES_PER_REASON]

    def finish(self) -> None:
        """End of the log: vLLM requests still waiting for their response are counted."""
        if self.joiner.pending or self.joiner.evicted:
            self.skipped["vllm_request_without_response"] += len(self.joiner.pending) + self.joiner.evicted
            self.joiner = VllmJoiner()

    def _skip(self, lineno: int, reason: str, detail: str = "") -> None:
        if self.strict and reason in MALFORMED:
            raise UsageError(f"{self.path}:{lineno}: {reason}{': ' + detail if detail else ''} (--strict)")
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append(lineno)

    def parse(self, data: bytes | list[bytes], first_lineno: int) -> Iterator[Record]:
        """The records of a chunk of whole lines (a blob or a list of lines) starting at ``first_lineno``."""
        if isinstance(data, (bytes, bytearray)):
            lines = data.split(b"\n")
            if lines and not lines[-1]:
                lines.pop()
        else:
            lines = data
        window = self.window
        joiner = self.joiner
        shapes = self.shapes
        lineno = first_lineno - 1
        for line in lines:
            lineno += 1
            if line[:1] == b"{":
                try:
                    obj = _loads(line)
                except _DECODE_ERRORS as err:
                    self._skip(lineno, "invalid_json", str(err)[:120])
                    continue
            else:
                s = line.strip()
                if not s:
                    self.skipped["blank_line"] += 1
                    continue
                if s[:1] == b"{":
                    try:
                        obj = _loads(s)
                    except _DECODE_ERRORS as err:
                        self._skip(lineno, "invalid_json", str(err)[:120])
                        continue
                elif (s[:1] in (b"[", b'"') or s[:1].isdigit()) and not self.text_log and not any(
                        m in s for m in _TEXT_LOG_MARKERS):
                    self._skip(lineno, "not_an_object")
                    continue
                else:
                    obj = None
            try:
                if obj is None or (type(obj) is dict and "message" in obj and type(obj["message"]) is str
                                   and len(obj) < 12 and _is_vllm_message(obj["message"])):
                    msg = line.decode("utf-8", "replace") if obj is None else obj["message"]
                    if "Finish: obj=" in msg:
                        self.text_log = True
                        rec = parse_sglang_text(msg)
                    elif _is_vllm_message(msg):
                        if not self.sequential:
                            raise NeedsSequential()
                        self.text_log = True
                        rec = joiner.feed(msg)
                        if rec is None:
                            continue
                    elif self.text_log or "Receive: obj=" in msg:
                        self.text_log = True
                        self.skipped["log_line_ignored"] += 1
                        continue
                    else:
                        raise SkipLine("invalid_json", "not JSON and not a vLLM/SGLang request log line")
                elif type(obj) is not dict:
                    raise SkipLine("not_an_object")
                elif "request" in obj or ("response" in obj and type(obj["response"]) is dict):
                    rec = parse_openai(obj)
                elif "messages" in obj or "prompt" in obj:
                    rec = parse_messages(obj)
                elif "event" in obj and ("rid" in obj or "obj" in obj):
                    rec = parse_sglang(obj)
                elif "conversations" in obj:
                    rec = parse_conversations(obj)
                elif "prompt_tokens" in obj or "input_tokens" in obj:
                    rec = parse_precounted(obj)
                else:
                    raise SkipLine("unknown_shape", f"keys {sorted(obj)[:8]}")
                t = None
                if window is not None:
                    t = record_time(obj) if obj is not None else None
                    if t is None:
                        raise SkipLine("no_timestamp")
                    if (window[0] is not None and t < window[0]) or (window[1] is not None and t >= window[1]):
                        raise SkipLine("outside_window")
                if type(rec) is list:
                    for r in rec:
                        r.lineno = lineno
                        r.timestamp = t
                        scan(r)
                    batch = rec
                else:
                    rec.lineno = lineno
                    rec.timestamp = t
                    scan(rec)
                    batch = None
            except SkipLine as sk:
                self._skip(lineno, sk.reason, sk.detail)
                continue
            if batch is None:
                shapes[rec.shape] += 1
                self.records += 1
                yield rec
            else:
                for r in batch:
                    shapes[r.shape] += 1
                    self.records += 1
                    yield r


class TrafficReader:
    """Every :class:`Record` of a log, in order, in one process (chunks + one :class:`LineParser`).

    After iteration: ``lines``, ``records``, ``skipped`` (reason -> count), ``examples`` (reason -> first
    line numbers), ``shapes``, ``sha256``, ``bytes``, ``gzipped``.
    """

    def __init__(self, path: str | Path, *, strict: bool = False, window: tuple | None = None, on_progress=None):
        self.chunks = LogChunks(path, on_progress=on_progress, as_lines=True)
        self.parser = LineParser(path, strict=strict, window=window)

    def __iter__(self) -> Iterator[Record]:
        for first, data in self.chunks:
            yield from self.parser.parse(data, first)
        self.parser.finish()

    def __getattr__(self, name):
        if name in ("lines", "sha256", "bytes", "gzipped"):
            return getattr(self.chunks, name)
        if name in ("records", "skipped", "examples", "shapes"):
            return getattr(self.parser, name)
        raise AttributeError(name)


def stderr_is_tty() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
