"""A small async streaming client for OpenAI-compatible completions: per-request TTFT, TPOT, errors.

    records = asyncio.run(run_load(url, "tiny", prompts, concurrency=4, max_tokens=64, min_tokens=64))

Per request: time to first token (TTFT), end-to-end latency, output tokens
(from the server's ``usage``, which counts tokens, not stream chunks: under
speculation one chunk carries several tokens), and time per output token
``TPOT = (e2e - TTFT) / (tokens - 1)``. Errors (connection refused, 4xx/5xx,
a stream that ends without ``[DONE]``, timeouts) are recorded with their kind,
never raised. Bounded: every request has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class RequestRecord:
    index: int
    ok: bool = False
    error: str | None = None
    status: int | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    tpot_ms: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    chunks: int = 0
    start_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


async def read_stream(client, url: str, body: dict, timeout_s: float, on_event, headers: dict | None = None):
    """POST a streaming request and call ``on_event(event, t)`` for each JSON data event.

    Returns ``(status, error)``: error is None when the stream ended with ``[DONE]``, otherwise its kind
    and detail (``http_<code>: ...``, ``stream_error: ...``, ``timeout``, ``connection: ...``,
    ``stream_ended_early``). Never raises for the server's faults.
    """
    import httpx

    status = None
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as resp:
            status = resp.status_code
            if status >= 400:
                return status, f"http_{status}: {(await resp.aread()).decode(errors='replace')[:300]}"
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return status, None
                try:
                    ev = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if ev.get("error"):
                    return status, f"stream_error: {str(ev['error'])[:200]}"
                on_event(ev, time.perf_counter())
    except httpx.TimeoutException:
        return status, "timeout"
    except httpx.HTTPError as err:
        return status, f"connection: {type(err).__name__}"
    return status, "stream_ended_early"


async def _one(client, url: str, body: dict, index: int, timeout_s: float, t_origin: float) -> RequestRecord:
    rec = RequestRecord(index=index)
    t0 = time.perf_counter()
    rec.start_s = t0 - t_origin
    first = None

    def on_event(ev, now):
        nonlocal first
        choices = ev.get("choices") or []
        if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
            rec.chunks += 1
            if first is None:
                first = now
        usage = ev.get("usage")
        if usage:
            rec.output_tokens = int(usage.get("completion_tokens") or 0)
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)

    rec.status, rec.error = await read_stream(client, url, body, timeout_s, on_event)
    t1 = time.perf_counter()
    if rec.error is not None:
        return rec
    rec.ok = True
    rec.e2e_ms = (t1 - t0) * 1000.0
    rec.ttft_ms = ((first or t1) - t0) * 1000.0
    if rec.output_tokens > 1 and first is not None:
        rec.tpot_ms = (t1 - first) * 1000.0 / (rec.output_tokens - 1)
    return rec


async def run_load(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                   min_tokens: int | None = None, temperature: float = 0.0, ignore_eos: bool = True,
                   timeout_s: float = 300.0, extra: dict | None = None) -> tuple[list[RequestRecord], float]:
    """Send ``prompts`` with at most ``concurrency`` in flight; returns (records, wall seconds)."""
    import httpx

    url = base_url.rstrip("/") + "/v1/completions"
    sem = asyncio.Semaphore(concurrency)
    t_origin = time.perf_counter()

    async def guarded(i: int, p: str, client) -> RequestRecord:
        body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": temperature,
                "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos,
                **({"min_tokens": min_tokens} if min_tokens else {}), **(extra or {})}
        async with sem:
            return await _one(client, url, body, i, timeout_s, t_origin)

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        records = await asyncio.gather(*(guarded(i, p, client) for i, p in enumerate(prompts)))
    return list(records), time.perf_counter() - t_origin


def _nearest_rank(v: list, q: float):
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def percentile(values, q: float):
    """Nearest-rank ``q``-quantile (0..1) of the values that are not None; None if there are none."""
    v = sorted(x for x in values if x is not None)
    return _nearest_rank(v, q) if v else None


def stat(values) -> dict | None:
    """mean / p50 / p90 / p99 (nearest rank) of the values that are not None; None if there are none."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return {"mean": statistics.fmean(v), "p50": _nearest_rank(v, 0.5), "p90": _nearest_rank(v, 0.9),
            "p99": _nearest_rank(v, 0.99)}


def summarize(records: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = (r.error or "unknown").split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "requests": len(records), "ok": len(ok), "errors": errors, "wall_s": wall_s,
        "output_tokens": out_tokens, "output_tokens_per_s": out_tokens / wall_s if wall_s > 0 else 0.0,
        "ttft_ms": stat([r.ttft_ms for r in ok]), "tpot_ms": stat([r.tpot_ms for r in ok]),
        "e2e_ms": stat([r.e2e_ms for r in ok]),
    }
