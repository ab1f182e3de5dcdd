"""One way to say what is wrong with an engine option: the key's dotted path, the problem, the value given."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(err: ValidationError) -> str:
    """``'fallback.accept_floor': Input should be less than 1 (got 1.5)``; several problems joined by "; "."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        parts.append(f"{loc!r}: {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" else ""))
    return "; ".join(parts)
