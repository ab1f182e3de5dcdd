"""Phase 4's measurement: the standing config and the candidate, served and loaded with the traffic's own prompts.

Each arm is an OpenAI-compatible endpoint: ``--served local`` starts one ``vllm serve`` of the target
per arm (both up for the whole A/B, so that trials can alternate), ``--served URL`` measures the
standing deployment at URL and the candidate at ``--candidate-url``. Trials run in ABBA order
(standing, candidate, candidate, standing, ...): both arms see the same slow drifts of the
machine. Every trial replays the same prompts (the last user turn of redacted traffic requests that
fit the context, in a seeded order) with temperature 0 and a forced output length (``min_tokens`` +
``ignore_eos``), scrapes ``/metrics`` right before and after, and writes one ``summary.json`` in
the ``specdec_trial_summary_v1`` schema that ``specdec decide`` reads. A trial whose summary exists
is not run again (resume).

Local arms run with ``NUMBA_NUM_THREADS=1`` whatever their method (vLLM's prompt-lookup drafter uses
one numba thread; an idle pool of one per core slows the forward on CPUs, see
``specdec_engine/vllm/numba_threads.py``), so the setting cannot favour either arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import UsageError

ARMS = ("standing", "candidate")
LOCAL_ENV = {"NUMBA_NUM_THREADS": "1"}


def trial_order(trials: int) -> list[tuple[int, str]]:
    """ABBA: (0, standing), (0, candidate), (1, candidate), (1, standing), (2, standing), ..."""
    order = []
    for i in range(trials):
        pair = ARMS if i % 2 == 0 else ARMS[::-1]
        order += [(i, a) for a in pair]
    return order


def replay_prompts(redacted: Path, n: int, max_prompt_tokens: int, seed: int) -> list[list[dict]]:
    """Up to ``n`` conversations (the request's turns, the answer removed) whose prompt fits, in a seeded order."""
    rows = []
    with open(redacted, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            msgs = [m for m in obj.get("messages") or [] if isinstance(m.get("content"), str) and m["content"]]
            while msgs and msgs[-1]["role"] == "assistant":
                msgs.pop()
            if msgs and int(obj.get("prompt_tokens") or 0) <= max_prompt_tokens:
                rows.append(msgs)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def synthetic_prompts(n: int, input_tokens: int, seed: int) -> list[list[dict]]:
    from ..aa import TokenCounter, synthetic_prompt

    counter = TokenCounter(None)
    return [[{"role": "user", "content": synthetic_prompt(counter, input_tokens, seed * 100_003 + i)}]
            for i in range(n)]


async def _run(endpoint: str, model: str, convs: list[list[dict]], concurrency: int, osl: int,
               timeout_s: float):
    import httpx

    from ..aa import _one

    url = endpoint.rstrip("/") + "/v1/chat/completions"
    sem = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def guarded(i, msgs, client):
        body = {"model": model, "messages": msgs, "max_tokens": osl, "min_tokens": osl, "ignore_eos": True,
                "temperature": 0.0, "top_p": 1.0, "stream": True, "stream_options": {"include_usage": True}}
        async with sem:
            return await _one(client, url, body, {}, i, timeout_s)

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        recs = await asyncio.gather(*(guarded(i, m, client) for i, m in enumerate(convs)))
    return list(recs), time.perf_counter() - t0


def run_trial(out_dir: Path, arm: str, trial: int, endpoint: str, model: str, convs: list[list[dict]],
              settings: dict, config: dict | None, timeout_s: float = 600.0, burn_in: int = 0) -> dict:
    """One measured trial of one arm -> ``<out_dir>/<arm>/trial-<i>/summary.json`` (skipped if it exists)."""
    from specdec_engine.cache import atomic_write_bytes

    from ..aa import scrape, summarize
    from ..decide import TRIAL_SCHEMA_ID
    from ..vllm_server import spec_window

    td = out_dir / arm / f"trial-{trial}"
    path = td / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    td.mkdir(parents=True, exist_ok=True)
    osl, conc = settings["output_tokens"], settings["concurrency"]
    if burn_in:
        asyncio.run(_run(endpoint, model, convs[:burn_in], conc, osl, timeout_s))
    before = scrape(endpoint, None)
    records, wall = asyncio.run(_run(endpoint, model, convs, conc, osl, timeout_s))
    after = scrape(endpoint, None)
    body, warnings = summarize(records, wall, False)
    summary = {"schema": TRIAL_SCHEMA_ID, "trial": trial, "label": arm, "settings": {**settings, "endpoint": endpoint},
               **body, "spec_decode": spec_window(before, after), "warnings": warnings,
               "context": {"source": "specdec loop (phase 4)", "arm": arm, "speculative_config": config,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    with open(td / "records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())
    return summary


@contextlib.contextmanager
def arm_endpoints(served: str, candidate_url: str | None, target: str, configs: dict[str, dict | None],
                  log_dir: Path, max_model_len: int, served_model_name: str):
    """{arm: (endpoint, model name)}; local servers are started here and stopped on exit."""
    if served != "local":
        if not candidate_url:
            raise UsageError("--served is a URL: the candidate needs its own endpoint (--candidate-url), "
                             "or use --served local to let the loop start both arms")
        yield {"standing": (served, served_model_name), "candidate": (candidate_url, served_model_name)}
        return
    from ..vllm_server import VLLMServer

    servers: dict[str, Any] = {}
    try:
        for arm in ARMS:
            srv = VLLMServer(target, speculative_config=configs[arm], env=LOCAL_ENV, log_path=log_dir / f"{arm}.log",
                             max_model_len=max_model_len, served_model_name=served_model_name)
            servers[arm] = srv.start()
        yield {arm: (srv.url, served_model_name) for arm, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.stop()
