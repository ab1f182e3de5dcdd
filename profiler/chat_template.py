"""A target's tokenizer and chat template, loaded from an HF tokenizer folder without transformers.

``specdec profile --tokenizer DIR`` counts prompt tokens on the prompt the engine really sees (the
messages rendered through the chat template, generation prompt included) and completion tokens on the
generated text, with the fast ``tokenizers`` library in batches. ``specdec corpus`` renders every row
through the same template to compute its assistant loss mask.

The template is rendered with a sandboxed jinja2 environment set up like transformers'
``apply_chat_template`` (``trim_blocks``, ``lstrip_blocks``, ``tojson``, ``raise_exception``,
``strftime_now``, the tokenizer's special tokens as variables); ``{% generation %}`` blocks are
accepted and rendered as their content. A folder's template is ``chat_template.jinja``, else
``tokenizer_config.json``'s ``chat_template`` (a string, or the entry named ``default`` of a list).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from .errors import UsageError


def _jinja2():
    try:
        import jinja2
    except ImportError:
        raise UsageError("chat templates need jinja2: pip install 'specdec-engine[profile]'") from None
    return jinja2


def _jinja_env():
    jinja2 = _jinja2()
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (HF assistant-mask markers) rendered as their body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token variables templates expect."""

    def __init__(self, source: str, special: dict | None = None, origin: str = ""):
        jinja2 = _jinja2()

        self.source = source
        self.origin = origin
        self.special = {k: v for k, v in (special or {}).items() if isinstance(v, str)}
        try:
            self.template = _jinja_env().from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise UsageError(f"{origin or 'chat template'}: line {err.lineno}: {err.message}") from None

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None) -> str:
        kw = dict(self.special)
        if tools:
            kw["tools"] = tools
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **kw)


def _special_tokens(cfg: dict) -> dict:
    out = {}
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = cfg.get(k)
        if isinstance(v, dict):  # AddedToken serialised
            v = v.get("content")
        if isinstance(v, str):
            out[k] = v
    return out


def load_template(path: str | Path, flag: str = "--chat-template") -> ChatTemplate:
    """A template from a ``.jinja`` file or an HF tokenizer folder; UsageError naming ``flag`` if none."""
    p = Path(path)
    if p.is_file():
        cfg_path = p.parent / "tokenizer_config.json"
        special = {}
        if cfg_path.is_file():
            try:
                special = _special_tokens(json.loads(cfg_path.read_text()))
            except (ValueError, OSError):
                special = {}
        if p.suffix == ".json":  # a tokenizer_config.json given directly
            return _from_config(p, flag)
        try:
            return ChatTemplate(p.read_text(), special, str(p))
        except OSError as err:
            raise UsageError(f"{flag} {p}: cannot read ({err.strerror})") from None
    if p.is_dir():
        cfg_path = p / "tokenizer_config.json"
        special = {}
        if cfg_path.is_file():
            try:
                special = _special_tokens(json.loads(cfg_path.read_text()))
            except ValueError as err:
                raise UsageError(f"{flag} {cfg_path}: not JSON ({err})") from None
        if (p / "chat_template.jinja").is_file():
            return ChatTemplate((p / "chat_template.jinja").read_text(), special, str(p / "chat_template.jinja"))
        if cfg_path.is_file():
            return _from_config(cfg_path, flag)
        raise UsageError(f"{flag} {p}: no chat_template.jinja or tokenizer_config.json there")
    raise UsageError(f"{flag} {p}: no such file or folder")


def _from_config(cfg_path: Path, flag: str) -> ChatTemplate:
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise UsageError(f"{flag} {cfg_path}: not JSON ({err})") from None
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default") or next(iter(named.values()), None)
    if not isinstance(tpl, str):
        raise UsageError(f"{flag} {cfg_path}: no chat_template in it")
    return ChatTemplate(tpl, _special_tokens(cfg), str(cfg_path))


def find_template(path: str | Path) -> ChatTemplate | None:
    """The template of a tokenizer folder, or None when it has none (no error)."""
    try:
        return load_template(path)
    except UsageError:
        return None


class HFTokenizer:
    """A fast (Rust) tokenizer from ``tokenizer.json``: batch counting with optional template rendering."""

    def __init__(self, path: str | Path, flag: str = "--tokenizer"):
        p = Path(path)
        tok_file = p / "tokenizer.json" if p.is_dir() else p
        if not tok_file.is_file():
            raise UsageError(f"{flag} {p}: no tokenizer.json (an HF tokenizer folder is expected)")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UsageError(f"{flag} needs the 'tokenizers' package (pip install tokenizers)") from None
        try:
            self.tok = Tokenizer.from_file(str(tok_file))
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise UsageError(f"{flag} {tok_file}: not a tokenizers file ({err})") from None
        self.path = str(p)
        self.sha256 = hashlib.sha256(tok_file.read_bytes()).hexdigest()
        self.template = find_template(p.parent if p.is_file() else p)

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tok.encode(text, add_special_tokens=False).offsets
