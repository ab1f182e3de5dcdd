"""Redaction of personal data and secrets in traffic text (exemplars, redacted traffic, corpus rows).

Nothing from a prompt leaves ``specdec profile`` unless the operator asks for it (``--keep-samples``,
``--write-redacted``), and then only after :func:`redact`. It replaces, in this order (secrets first,
so that a key is never half-eaten by a looser pattern):

=================  ======================================================================  ===============
what               pattern (summary)                                                       replacement
=================  ======================================================================  ===============
JWT                three base64url segments, the first starting ``eyJ``                    ``<JWT>``
private key block  ``-----BEGIN ... PRIVATE KEY----- ... -----END ...``                    ``<PRIVATE_KEY>``
bearer token       ``Bearer <token>`` (any case)                                           ``Bearer <TOKEN>``
API keys           ``sk-...`` (OpenAI/Anthropic style), ``AKIA``/``ASIA`` + 16 (AWS),      ``<API_KEY>``
                   ``ghp_/gho_/ghu_/ghs_/ghr_`` + 36, ``github_pat_...``, ``xox?-`` (Slack),
                   ``AIza`` + 35 (Google)
key = value        ``api_key=...``, ``"password": "..."``, ``secret: ...``, ``token=...``  ``<key>=<SECRET>``
e-mail address     ``local@domain.tld``                                                    ``<EMAIL>``
IP address         IPv4 dotted quad (each part <= 255); IPv6 (full or ``::``-compressed)  ``<IP>``
card number        13-19 digits, spaces/dashes allowed, passing the Luhn check;           ``<CARD>``
                   any ``dddd dddd dddd dddd`` group is treated as one regardless
phone number       ``+`` country code numbers, ``(area) ddd-dddd``, ``ddd-ddd-dddd``,      ``<PHONE>``
                   ``ddd.ddd.dddd`` and spaced international forms (7-15 digits)
=================  ======================================================================  ===============

Known limits: names and street addresses are not detected (no NER here); a 4-part version number
such as ``1.2.3.4`` is redacted as an IP address (better too much than too little).
"""

from __future__ import annotations

import re
from typing import Any

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}", re.I)
_API_KEYS = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}"                      # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-)
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"                # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}"              # GitHub fine-grained PAT
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"             # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}"                     # Google API key
)
_KEY_VALUE = re.compile(
    r"""(?i)(["']?\b(?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|password|passwd|pwd|"""
    r"""auth[_-]?token|access[_-]?token|token)\b["']?\s*[:=]\s*)(["']?)([^\s"',;]{6,})\2""")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.]*\d)")
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(
    rf"(?<![0-9A-Fa-f:])(?:(?:{_H}:){{7}}{_H}"           # full
    rf"|(?:{_H}:){{1,7}}:(?:{_H}(?::{_H}){{0,6}})?"       # a::b, a::, a:b::c
    rf"|::(?:{_H}(?::{_H}){{0,6}}))"                   # ::1, ::ffff:...
    rf"(?![0-9A-Fa-f:])")
_CARD_CANDIDATE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CARD_GROUPED = re.compile(r"(?<!\d)\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?!\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"           # +1 555 123 4567, +44 20 7946 0958, +15551234567
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"          # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"                        # 555-123-4567, 555.123.4567
    r"|\d{3} \d{3} \d{4}"                              # 555 123 4567
    r")(?![\w])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(m: re.Match) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    return "<CARD>" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)


def _phone(m: re.Match) -> str:
    n = sum(ch.isdigit() for ch in m.group(0))
    return "<PHONE>" if 7 <= n <= 15 else m.group(0)


def _ipv6(m: re.Match) -> str:
    s = m.group(0)  # C++ "abc::def" is not an address: ask for two colons and a digit
    return "<IP>" if s.count(":") >= 2 and any(ch.isdigit() for ch in s) else s


_DIGITS = re.compile(r"\d")
_API_KEY_HINTS = ("sk-", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza")
_KEY_VALUE_HINTS = ("key", "secret", "pass", "pwd", "token")


def redact(text: str) -> str:
    """``text`` with the personal data and secrets of the module table replaced by placeholders.

    Each pattern runs only when a cheap substring test says it can match (Python's regex engine
    costs ~0.1 us per character per pattern; most text has no '@', no key prefix, no digits run).
    """
    if not text:
        return text
    if "eyJ" in text:
        text = _JWT.sub("<JWT>", text)
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub("<PRIVATE_KEY>", text)
    low = text.lower()
    if "bearer" in low:
        text = _BEARER.sub(lambda m: f"{m.group(1)} <TOKEN>", text)
    if any(h in text for h in _API_KEY_HINTS):
        text = _API_KEYS.sub("<API_KEY>", text)
    if any(h in low for h in _KEY_VALUE_HINTS):
        text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}<SECRET>{m.group(2)}", text)
    if "@" in text:
        text = _EMAIL.sub("<EMAIL>", text)
    if "::" in text or text.count(":") >= 7:
        text = _IPV6.sub(_ipv6, text)
    if _DIGITS.search(text):
        if "." in text:
            text = _IPV4.sub("<IP>", text)
        text = _CARD_GROUPED.sub("<CARD>", text)
        text = _CARD_CANDIDATE.sub(_card, text)
        text = _PHONE.sub(_phone, text)
    return text


def redact_obj(obj: Any) -> Any:
    """:func:`redact` applied to every string inside nested lists/dicts (keys are kept)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, list):
        return [redact_obj(x) for x in obj]
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    return obj
