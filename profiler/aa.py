"""`specdec aa`: the Artificial Analysis workload shapes against any OpenAI-compatible endpoint.

    specdec aa --endpoint http://localhost:8000 --model NAME --shapes aa-1k,aa-10k --concurrency 10 \\
        --requests 20 --out runs/aa [--mode synthetic|dataset-replay] [--driver builtin|aiperf] [--dry-run]

Per shape: optional prewarm, a discarded burn-in pass, then the measured pass; `/metrics` is scraped
right before and after the measured pass, so the spec-decode acceptance it reports (from vLLM's
``vllm:spec_decode_*`` counters, plus every ``specdec_*`` counter) belongs to that window alone.
Writes ``<out>/<shape>/records.jsonl`` (one line per request), ``summary.json``, ``summary.png``
and prints a table; with ``--trial N`` they go to ``<out>/<shape>/trial-N/`` instead, so that
``specdec decide --baseline <out>/<shape>`` finds one ``summary.json`` per trial. ``summary.json``
follows the ``specdec_trial_summary_v1`` schema (``schemas/trial-summary.schema.json``): the
fields ``schema``, ``trial`` and ``settings`` (what must match between A/B arms) lead it. API keys
are read from the environment variable named by ``--api-key-env`` and never written anywhere.

Token counting: tiktoken's ``o200k_base`` when ``--encoding-file`` points at ``o200k_base.tiktoken``
(no download here) and tiktoken is installed; otherwise 4 characters per token, and the summary's
``context.token_counting.approximate`` is true with a warning (prompt sizes are then only roughly
the shape's).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .loadgen import stat
from .vllm_server import spec_window


@dataclass(frozen=True)
class Shape:
    input_tokens: int
    output_tokens: int  # "at least": min_tokens + ignore_eos


# The one table of shapes (README's "Artificial Analysis shapes" table is checked against it by a test).
SHAPES: dict[str, Shape] = {
    "aa-1k": Shape(1_000, 1_000),
    "aa-10k": Shape(10_000, 1_500),
    "aa-100k": Shape(100_000, 2_000),
}
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"


# ---------------------------------------------------------------------------- token counting
class TokenCounter:
    """o200k_base through tiktoken when its file is given, else 4 characters per token (flagged)."""

    def __init__(self, encoding_file: str | None):
        self.enc = None
        self.warning = None
        if encoding_file:
            if not Path(encoding_file).is_file():
                raise UsageError(f"--encoding-file {encoding_file}: no such file")
            try:
                import tiktoken
            except ImportError:
                raise UsageError("--encoding-file needs tiktoken (pip install tiktoken)") from None
            cache = Path(tempfile.mkdtemp(prefix="specdec-tiktoken-"))
            shutil.copy(encoding_file, cache / hashlib.sha1(O200K_URL.encode()).hexdigest())
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)  # tiktoken reads its cache by the URL's sha1
            self.enc = tiktoken.get_encoding("o200k_base")
        else:
            self.warning = ("no o200k_base encoding file (--encoding-file): token counts are approximate "
                            "(4 characters per token); prompt sizes only roughly match the shape")

    @property
    def method(self) -> str:
        return "tiktoken o200k_base" if self.enc is not None else "approx-4-chars-per-token"

    def count(self, text: str) -> int:
        return len(self.enc.encode(text, disallowed_special=())) if self.enc is not None else max(1, len(text) // 4)

    def trim(self, text: str, tokens: int) -> str:
        if self.enc is not None:
            return self.enc.decode(self.enc.encode(text, disallowed_special=())[:tokens])
        return text[:tokens * 4]


_WORDS = ("system latency token budget draft model request cache memory kernel batch stream verify accept "
          "window profile server client answer question context length measure report value table result "
          "policy engine graph tensor vector matrix layer head block tile sample median spread noise signal").split()


def synthetic_prompt(counter: TokenCounter, tokens: int, seed: int) -> str:
    """A question followed by filler text of ``tokens`` tokens (deterministic per seed)."""
    rng = random.Random(seed)
    head = f"Request {seed}. Read the notes below, then write a long, detailed answer about them.\n\n"
    words: list[str] = []
    text = head
    while counter.count(text) < tokens:
        words.extend(rng.choice(_WORDS) for _ in range(max(16, (tokens - counter.count(text)) // 2)))
        text = head + " ".join(words)
    return counter.trim(text, tokens)


def real_text_corpus() -> str:
    """Real prose-like text available offline: the docstrings and comments of Python's standard library."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for p in sorted(root.glob("*.py"))[:400]:
        try:
            parts.append(p.read_text(errors="replace"))
        except OSError:
            continue
    return "\n".join(parts)


def build_dataset(path: Path, counter: TokenCounter, shape: Shape, n: int, seed: int) -> list[str]:
    """Write (or read back) the replay file: n prompts of real text sized to the shape's input budget."""
    if path.is_file():
        prompts = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            try:
                prompts.append(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(f"{path}:{i}: not a JSON object with a 'prompt'") from None
        if len(prompts) < n:
            raise UsageError(f"{path}: {len(prompts)} prompts, {n} needed")
        return prompts[:n]
    corpus = real_text_corpus()
    rng = random.Random(seed)
    prompts = []
    span = shape.input_tokens * 6
    for i in range(n):
        start = rng.randrange(0, max(1, len(corpus) - span))
        body = counter.trim(corpus[start:start + span], shape.input_tokens - 24)
        prompts.append(f"Summarise and explain the following text in detail.\n\n{body}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return prompts


# ---------------------------------------------------------------------------- builtin driver
@dataclass
class Record:
    index: int
    ok: bool = False
    error: str | None = None
    status: int | None = None
    ttft_ms: float | None = None        # first streamed token of any kind (reasoning included)
    ttfo_ms: float | None = None        # first answer (non-reasoning) token
    e2e_ms: float | None = None
    tpot_ms: float | None = None        # per output token, from usage (a chunk may carry several tokens)
    chunk_gaps_ms: list = field(default_factory=list)
    output_tokens: int = 0
    reasoning_tokens: int = 0
    reasoning_chunks: int = 0
    prompt_tokens: int = 0


async def _one(client, url: str, body: dict, headers: dict, index: int, timeout_s: float) -> Record:
    from .loadgen import read_stream

    rec = Record(index=index)
    t0 = time.perf_counter()
    first = first_answer = last = None

    def on_event(ev, now):
        nonlocal first, first_answer, last
        choices = ev.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices else {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        answer = delta.get("content") or (choices[0].get("text") if choices else None)
        if reasoning or answer:
            if first is None:
                first = now
            if last is not None:
                rec.chunk_gaps_ms.append((now - last) * 1000.0)
            last = now
        if reasoning:
            rec.reasoning_chunks += 1
        if answer and first_answer is None:
            first_answer = now
        usage = ev.get("usage")
        if usage:
            rec.output_tokens = int(usage.get("completion_tokens") or 0)
            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            details = usage.get("completion_tokens_details") or {}
            rec.reasoning_tokens = int(details.get("reasoning_tokens") or 0)

    rec.status, rec.error = await read_stream(client, url, body, timeout_s, on_event, headers=headers)
    t1 = time.perf_counter()
    if rec.error is not None:
        return rec
    rec.ok = True
    rec.e2e_ms = (t1 - t0) * 1000.0
    rec.ttft_ms = ((first or t1) - t0) * 1000.0
    rec.ttfo_ms = (first_answer - t0) * 1000.0 if first_answer is not None else None
    if rec.output_tokens > 1 and first is not None:
        rec.tpot_ms = (t1 - first) * 1000.0 / (rec.output_tokens - 1)
    return rec


async def run_builtin(endpoint: str, model: str, prompts: list[str], concurrency: int, shape_out: int,
                      force_length: bool, api_key: str | None, timeout_s: float) -> tuple[list[Record], float]:
    import httpx

    url = endpoint.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sem = asyncio.Semaphore(concurrency)
    t_origin = time.perf_counter()

    async def guarded(i, p, client):
        body = {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": shape_out,
                "temperature": 0.0, "top_p": 1.0, "stream": True, "stream_options": {"include_usage": True}}
        if force_length:
            body.update(min_tokens=shape_out, ignore_eos=True)
        async with sem:
            return await _one(client, url, body, headers, i, timeout_s)

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        recs = await asyncio.gather(*(guarded(i, p, client) for i, p in enumerate(prompts)))
    return list(recs), time.perf_counter() - t_origin


# ---------------------------------------------------------------------------- metrics window
def scrape(endpoint: str, api_key: str | None) -> dict[str, float] | None:
    import httpx

    from .vllm_server import parse_metrics

    try:
        r = httpx.get(endpoint.rstrip("/") + "/metrics", timeout=10.0,
                      headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        return parse_metrics(r.text) if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


# ---------------------------------------------------------------------------- summary
def summarize(records: list[Record], wall_s: float, reasoning_model: bool) -> tuple[dict, list[str]]:
    ok = [r for r in records if r.ok]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = (r.error or "unknown").split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
    out_tokens = sum(r.output_tokens for r in ok)
    warnings = []
    with_ttfo = [r for r in ok if r.ttfo_ms is not None]
    if reasoning_model and ok and all(r.reasoning_chunks == 0 for r in ok):
        warnings.append("reasoning model but no reasoning field was streamed: TTFT == TTFO; is the server's "
                        "reasoning parser configured?")
    metrics = {
        "ttft_ms": stat(r.ttft_ms for r in ok), "ttfo_ms": stat(r.ttfo_ms for r in with_ttfo),
        "ttfo_coverage": len(with_ttfo) / len(ok) if ok else 0.0,
        "tpot_ms": stat(r.tpot_ms for r in ok), "itl_chunk_ms": stat(g for r in ok for g in r.chunk_gaps_ms),
        "e2e_ms": stat(r.e2e_ms for r in ok),
        "output_tokens_per_s": stat((r.output_tokens - 1) / ((r.e2e_ms - r.ttft_ms) / 1000.0)
                                    for r in ok if r.output_tokens > 1 and r.e2e_ms > r.ttft_ms),
        "aggregate_output_tokens_per_s": out_tokens / wall_s if wall_s > 0 else 0.0,
        "request_throughput": len(ok) / wall_s if wall_s > 0 else 0.0,
        "reasoning_tokens": stat(r.reasoning_tokens for r in ok),
        "requests": len(records), "ok": len(ok), "wall_s": wall_s, "output_tokens": out_tokens,
    }
    return {"metrics": metrics, "errors": {"count": len(records) - len(ok), "by_kind": errors}}, warnings


def plot(records: list[Record], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (name, vals) in zip(axes, [("TTFT (ms)", [r.ttft_ms for r in ok]), ("TPOT (ms)", [r.tpot_ms for r in ok]),
                                       ("end to end (s)", [r.e2e_ms / 1000 for r in ok])]):
        vals = [v for v in vals if v is not None]
        if vals:
            ax.hist(vals, bins=min(30, max(5, len(vals))), color="tab:blue", alpha=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("requests")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- aiperf
AIPERF_VERSION = "0.13.0"  # the version the command line and the JSON mapping below were checked against
AIPERF_VENV_BIN = Path(__file__).resolve().parents[1] / ".venv-aiperf" / "bin" / "aiperf"


def find_aiperf(explicit: str | None = None) -> str | None:
    """``--aiperf PATH``, else the repository's ``.venv-aiperf`` (``make aiperf-venv``), else ``aiperf`` on PATH."""
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    if AIPERF_VENV_BIN.is_file():
        return str(AIPERF_VENV_BIN)
    return shutil.which("aiperf")


def aiperf_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def aiperf_tokenizer(args) -> str | None:
    """What AIPerf tokenizes with (it needs one even for replay): ``--tokenizer`` (a Hugging Face tokenizer folder,
    or a hub name where the hub is reachable), else AIPerf's ``builtin`` (tiktoken o200k_base) when
    ``--encoding-file`` is given: TokenCounter puts that file in TIKTOKEN_CACHE_DIR, which AIPerf inherits."""
    return args.tokenizer or ("builtin" if args.encoding_file else None)


def aiperf_command(args, shape: Shape, input_file: Path | None, artifact_dir: Path, aiperf: str = "aiperf",
                   tokenizer: str | None = None) -> list[str]:
    """The ``aiperf profile`` command line for one shape, checked against aiperf 0.13.0's CLI.

    - ``--url`` takes the base URL (scheme kept; AIPerf appends ``/v1/chat/completions`` for ``chat``).
    - ``--use-server-token-count``: token counts come from the server's ``usage`` (AIPerf then asks for
      ``stream_options.include_usage``), so ITL/TPOT and tokens/s are per token whatever a chunk carries
      (speculative decoding streams several tokens per chunk), as in the builtin driver.
    - ``--prompt-output-tokens-mean`` becomes ``max_completion_tokens``; ``--extra-inputs key:value`` (values
      typed by AIPerf: ``0`` -> 0, ``true`` -> true) adds ``min_tokens``/``ignore_eos``/``temperature``/``top_p``.
    - dataset-replay: ``--input-file`` in AIPerf's ``single_turn`` JSONL (``{"text": ...}``, see
      write_aiperf_dataset), replayed in file order (``--dataset-sampling-strategy sequential``).
    - No ``--warmup-request-count``: the burn-in runs before the ``/metrics`` window opens (builtin client),
      so AIPerf's warmup would put discarded requests inside the spec-decode window.
    """
    cmd = [aiperf, "profile", "--model", args.model, "--url", args.endpoint.rstrip("/"), "--endpoint-type", "chat",
           "--streaming", "--use-server-token-count", "--concurrency", str(args.concurrency),
           "--request-count", str(args.requests), "--random-seed", str(args.seed),
           "--prompt-output-tokens-mean", str(shape.output_tokens), "--prompt-output-tokens-stddev", "0",
           "--extra-inputs", "temperature:0", "--extra-inputs", "top_p:1",
           "--request-timeout-seconds", f"{args.timeout_s:g}",
           "--output-artifact-dir", str(artifact_dir), "--ui-type", "none", "--no-gpu-telemetry"]
    if not args.no_force_length:
        cmd += ["--extra-inputs", f"min_tokens:{shape.output_tokens}", "--extra-inputs", "ignore_eos:true"]
    if input_file is None:
        cmd += ["--prompt-input-tokens-mean", str(shape.input_tokens), "--prompt-input-tokens-stddev", "0"]
    else:
        cmd += ["--input-file", str(input_file), "--custom-dataset-type", "single_turn",
                "--dataset-sampling-strategy", "sequential"]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    if args.api_key_env:
        cmd += ["--api-key", f"${args.api_key_env}"]  # the variable's name; its value only in the child's argv
    return cmd


def write_aiperf_dataset(path: Path, prompts: list[str]) -> Path:
    """The replay prompts in AIPerf's ``single_turn`` JSONL format (``{"text": ...}`` a line), same order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
    return path


def _aiperf_error_kind(err: dict) -> str:
    """AIPerf's per-request ErrorDetails -> the builtin driver's error kinds where they mean the same."""
    code, kind = err.get("code"), str(err.get("type") or "unknown")
    chain = " ".join(err.get("cause_chain") or []) + " " + kind
    if code == 499 or "Timeout" in chain:
        return "timeout"
    if isinstance(code, int) and code >= 400:
        return f"http_{code}"
    if "ClientConnector" in chain or "ConnectionRefused" in chain:
        return "connection"
    if "Payload" in chain or "ServerDisconnected" in chain or "SSE" in chain:
        return "stream_ended_early"
    return kind


def aiperf_records(artifact_dir: Path) -> list[Record]:
    """``profile_export.jsonl`` (one line per request, written even when every request failed) -> Records,
    measured phase only. Values are AIPerf's own per request: TTFT, TTFO, request latency, ITL (per token),
    the inter-chunk gaps, the server's output/reasoning token counts."""
    path = artifact_dir / "profile_export.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        meta, m = d.get("metadata") or {}, d.get("metrics") or {}
        if meta.get("benchmark_phase", "profiling") != "profiling":
            continue
        v = lambda k: (m.get(k) or {}).get("value")  # noqa: E731
        rec = Record(index=len(recs))
        err = d.get("error")
        if err:
            rec.error, rec.status = f"{_aiperf_error_kind(err)}: {str(err.get('message'))[:300]}", err.get("code")
            recs.append(rec)
            continue
        if v("output_sequence_length") is None and v("usage_completion_tokens") is None:
            # with --use-server-token-count a finished stream ends with a usage chunk; AIPerf counts a stream
            # cut before it (no [DONE]) as a success: the builtin driver's "stream_ended_early"
            rec.error = "stream_ended_early: no final usage chunk (AIPerf counted it as a success)"
            recs.append(rec)
            continue
        rec.ok = True
        rec.ttft_ms, rec.ttfo_ms, rec.e2e_ms = v("time_to_first_token"), v("time_to_first_output_token"), \
            v("request_latency")
        rec.tpot_ms = v("inter_token_latency")
        rec.chunk_gaps_ms = list(v("inter_chunk_latency") or [])
        rec.output_tokens = int(v("output_sequence_length") or v("usage_completion_tokens") or 0)
        rec.prompt_tokens = int(v("input_sequence_length") or v("usage_prompt_tokens") or 0)
        rec.reasoning_tokens = int(v("reasoning_token_count") or 0)
        if rec.reasoning_tokens or (rec.ttfo_ms is not None and rec.ttft_ms is not None and rec.ttfo_ms > rec.ttft_ms):
            rec.reasoning_chunks = 1  # AIPerf gives no chunk kinds: reasoning was streamed before the answer
        recs.append(rec)
    return recs


# our metric -> AIPerf's tag in profile_export_aiperf.json (aiperf 0.13.0; units ms, tokens/s/user, tokens)
AIPERF_STATS = {"ttft_ms": "time_to_first_token", "ttfo_ms": "time_to_first_output_token",
                "tpot_ms": "inter_token_latency", "itl_chunk_ms": "inter_chunk_latency", "e2e_ms": "request_latency",
                "output_tokens_per_s": "output_token_throughput_per_user", "reasoning_tokens": "reasoning_token_count"}


def parse_aiperf(artifact_dir: Path) -> dict | None:
    """``profile_export_aiperf.json`` -> our metric fields, AIPerf's statistics (its percentiles interpolate
    linearly; the builtin driver's are nearest-rank). None when AIPerf wrote no such file (it writes none
    when every request failed). Layout (schema_version 1.4): one top-level object per metric tag,
    ``{"unit", "avg", "p1".."p99", "min", "max", "std", "count", "sum"}``; run-level ones have ``avg`` only."""
    path = artifact_dir / "profile_export_aiperf.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())

    def stat_of(tag):
        m = data.get(tag)
        if not isinstance(m, dict) or m.get("avg") is None or m.get("p50") is None:
            return None
        return {"mean": m["avg"], "p50": m["p50"], "p90": m.get("p90"), "p99": m.get("p99")}

    def avg(tag):
        m = data.get(tag)
        return m.get("avg") if isinstance(m, dict) else None

    out = {k: stat_of(tag) for k, tag in AIPERF_STATS.items()}
    out.update(aggregate_output_tokens_per_s=avg("output_token_throughput"),
               request_throughput=avg("request_throughput"), wall_s=avg("benchmark_duration"),
               ok=avg("request_count"), errors=avg("error_request_count") or 0,
               output_tokens=avg("total_output_tokens"),
               ttfo_count=(data.get("time_to_first_output_token") or {}).get("count"),
               aiperf_version=data.get("aiperf_version"), error_summary=data.get("error_summary") or [],
               is_complete=data.get("is_complete"), was_cancelled=data.get("was_cancelled"))
    return out


def run_aiperf(cmd: list[str], artifact_dir: Path, log_path: Path, tokenizer: str | None,
               timeout_s: float) -> tuple[int | None, float]:
    """Run AIPerf (its own process group, killed whole on timeout); its console output goes to ``log_path``."""
    env = dict(os.environ)
    if tokenizer and Path(tokenizer).is_dir():
        # aiperf 0.13.0 with HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE looks even a local folder up as a hub repo id
        # (snapshot_download -> HFValidationError); online mode loads a local folder without any request.
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
    if artifact_dir.exists():
        shutil.rmtree(artifact_dir)  # never parse a previous run's export
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.perf_counter() - t0


# ---------------------------------------------------------------------------- command
def _shapes(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in SHAPES]
    if bad or not names:
        raise UsageError(f"--shapes: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(SHAPES)}")
    return names


def aa_command(args) -> int:
    names = _shapes(args.shapes)
    if args.concurrency < 1 or args.requests < 1:
        raise UsageError("--concurrency and --requests must be >= 1")
    if not 0 < args.scale <= 1:
        raise UsageError(f"--scale must be in (0, 1], got {args.scale}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    counter = TokenCounter(args.encoding_file)
    if counter.warning:
        print(f"specdec aa: WARNING: {counter.warning}", file=sys.stderr)
    aiperf = tokenizer = None
    driver_version = "builtin"
    if args.driver == "aiperf":
        aiperf = find_aiperf(args.aiperf)
        tokenizer = aiperf_tokenizer(args)
        if tokenizer is None:
            msg = ("--driver aiperf needs a tokenizer: --tokenizer PATH (a Hugging Face tokenizer folder, e.g. the "
                   "served model's) or --encoding-file o200k_base.tiktoken (AIPerf's builtin tiktoken tokenizer)")
            if not args.dry_run:
                raise UsageError(msg)
            print(f"specdec aa: WARNING: {msg}", file=sys.stderr)
        if not args.dry_run:
            if aiperf is None:
                raise UsageError("--driver aiperf: no aiperf (make aiperf-venv builds .venv-aiperf/, or pass "
                                 "--aiperf PATH), or use --driver builtin")
            driver_version = f"aiperf {aiperf_version(aiperf)}"
    out = Path(args.out)
    for name in names:
        base = SHAPES[name]
        shape = Shape(max(8, int(base.input_tokens * args.scale)), max(2, int(base.output_tokens * args.scale)))
        d = out / name
        td = d / f"trial-{args.trial}" if args.trial is not None else d  # this run's files (dataset stays in d)
        n_total = args.requests + args.burn_in
        dataset = Path(args.dataset or (d / "dataset.jsonl"))
        if args.driver == "aiperf" and args.dry_run:  # print, write nothing
            replay = d / "dataset.aiperf.jsonl" if args.mode == "dataset-replay" else None
            line = shlex.join(aiperf_command(args, shape, replay, td / "aiperf", aiperf or "aiperf", tokenizer))
            if args.api_key_env:  # "$VAR" so that a shell expands it when the line is pasted
                line = line.replace(shlex.quote(f"${args.api_key_env}"), f'"${args.api_key_env}"')
            print(line)
            continue
        if args.dry_run:
            print(f"{name}: builtin driver, {args.requests} requests (+{args.burn_in} burn-in) at concurrency "
                  f"{args.concurrency}, input ~{shape.input_tokens} tokens, output "
                  f"{'>=' if not args.no_force_length else '<='}{shape.output_tokens} tokens, {args.mode}")
            continue
        td.mkdir(parents=True, exist_ok=True)
        if args.mode == "dataset-replay":
            prompts = build_dataset(dataset, counter, shape, n_total, args.seed)
        else:
            prompts = [synthetic_prompt(counter, shape.input_tokens, args.seed * 100_003 + i) for i in range(n_total)]
        force = not args.no_force_length
        if args.prewarm:
            asyncio.run(run_builtin(args.endpoint, args.model, prompts[:1], 1, min(16, shape.output_tokens), force,
                                    api_key, args.timeout_s))
        if args.burn_in:  # both drivers: before the /metrics window opens, so it never counts
            asyncio.run(run_builtin(args.endpoint, args.model, prompts[:args.burn_in], args.concurrency,
                                    shape.output_tokens, force, api_key, args.timeout_s))
        if args.settle_s:
            print(f"{name}: settling {args.settle_s:.0f} s", file=sys.stderr)
            time.sleep(args.settle_s)
        warnings = []
        if args.driver == "aiperf":
            replay = (write_aiperf_dataset(d / "dataset.aiperf.jsonl", prompts[args.burn_in:])
                      if args.mode == "dataset-replay" else None)
            cmd = aiperf_command(args, shape, replay, td / "aiperf", aiperf, tokenizer)
            run_cmd = [api_key if c == f"${args.api_key_env}" else c for c in cmd]
            waves = -(-args.requests // args.concurrency)
            before = scrape(args.endpoint, api_key)
            rc, wall = run_aiperf(run_cmd, td / "aiperf", td / "aiperf.log", tokenizer,
                                  timeout_s=300.0 + args.timeout_s * waves)
            after = scrape(args.endpoint, api_key)
            records = aiperf_records(td / "aiperf")
            agg = parse_aiperf(td / "aiperf")
            body, more = summarize(records, agg["wall_s"] if agg and agg["wall_s"] else wall, args.reasoning_model)
            warnings += more
            missing = args.requests - len(records)
            if missing > 0:  # never sent or never recorded (AIPerf failed or was killed): errors, not silence
                body["errors"]["count"] += missing
                body["errors"]["by_kind"]["aiperf_no_record"] = missing
                body["metrics"]["requests"] = args.requests
            if agg is not None:
                m = body["metrics"]
                for k in AIPERF_STATS:
                    if agg[k] is not None:
                        m[k] = agg[k]
                for k in ("aggregate_output_tokens_per_s", "request_throughput", "wall_s"):
                    if agg[k] is not None:
                        m[k] = agg[k]
                if agg["ttfo_count"] is not None and m["ok"]:
                    m["ttfo_coverage"] = min(1.0, agg["ttfo_count"] / m["ok"])
                if agg["ok"] is not None and int(agg["ok"]) != m["ok"]:
                    warnings.append(f"AIPerf counted {int(agg['ok'])} successful requests, {m['ok']} here (streams "
                                    "cut before the usage chunk are errors here); its statistics include them")
            if rc != 0:
                box = str.maketrans("", "", "│╭╮╰╯─•")  # AIPerf's console boxes
                tail = [" ".join(x.translate(box).split()) for x in
                        (td / "aiperf.log").read_text(errors="replace").strip().splitlines()[-8:]]
                warnings.append(f"aiperf {'timed out (killed)' if rc is None else f'exited with {rc}'}"
                                f"{'' if agg else ', no profile_export_aiperf.json'} (see {td / 'aiperf.log'}): "
                                + " ".join(x for x in tail if x))
            (td / "aiperf-run.json").write_text(json.dumps(
                {"command": cmd, "returncode": rc, "wall_s": wall, "aiperf": aiperf, "version": driver_version,
                 "tokenizer": tokenizer, "export": str(td / "aiperf" / "profile_export_aiperf.json") if agg else None,
                 "percentiles": "aiperf's (linear interpolation)" if agg else "nearest rank over profile_export.jsonl",
                 "error_summary": agg["error_summary"] if agg else None}, indent=1) + "\n")
        else:
            before = scrape(args.endpoint, api_key)
            records, wall = asyncio.run(run_builtin(args.endpoint, args.model, prompts[args.burn_in:],
                                                    args.concurrency, shape.output_tokens, force, api_key,
                                                    args.timeout_s))
            after = scrape(args.endpoint, api_key)
            body, more = summarize(records, wall, args.reasoning_model)
            warnings += more
        if counter.warning:
            warnings.append(counter.warning)
        if not force:
            warnings.append("output length was a cap (max_tokens), not forced (min_tokens/ignore_eos off)")
        summary = {**_trial_header(args, name, shape, args.driver),
                   "context": _context(args, name, shape, counter, driver_version), **body,
                   "spec_decode": spec_window(before, after), "warnings": warnings}
        with open(td / "records.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(asdict(r)) + "\n")
        (td / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        plot(records, td / "summary.png", f"{name} x{args.scale} at concurrency {args.concurrency}: {args.model}"
                                          f" ({args.driver})")
        _print_row(name, summary)
    return 0


def _trial_header(args, name, shape, driver) -> dict:
    """``schema``, ``trial`` and ``settings``: what ``specdec decide`` requires to match between A/B arms."""
    from .decide import TRIAL_SCHEMA_ID

    settings = {"endpoint": args.endpoint, "model": args.model, "workload": name, "dataset": args.mode,
                "input_tokens": shape.input_tokens, "output_tokens": shape.output_tokens,
                "output_length": "cap" if args.no_force_length else "forced", "concurrency": args.concurrency,
                "requests": args.requests, "temperature": 0.0, "top_p": 1.0, "driver": driver}
    return {"schema": TRIAL_SCHEMA_ID, "trial": args.trial, "settings": settings}


def _context(args, name, shape, counter, driver_version) -> dict:
    return {"endpoint": args.endpoint, "model": args.model, "shape": name, "scale": args.scale,
            "input_tokens": shape.input_tokens, "output_tokens": shape.output_tokens,
            "output_length": "cap" if args.no_force_length else "forced (min_tokens + ignore_eos)",
            "mode": args.mode, "concurrency": args.concurrency, "requests": args.requests, "burn_in": args.burn_in,
            "settle_s": args.settle_s, "driver": driver_version, "temperature": 0.0, "top_p": 1.0,
            "token_counting": {"method": counter.method, "approximate": counter.enc is None},
            "date": dt.datetime.now(dt.timezone.utc).isoformat()}


def _print_row(name: str, s: dict) -> None:
    m, sd = s["metrics"], s["spec_decode"]
    f = lambda x, k="p50": "-" if not x else f"{x[k]:.1f}"  # noqa: E731
    al = "-" if sd["acceptance_length"] is None else f"{sd['acceptance_length']:.2f}"
    print(f"{'shape':<9}{'ok':>5}{'err':>5}{'TTFT p50':>10}{'TTFO p50':>10}{'TPOT p50':>10}{'E2E p50':>10}"
          f"{'tok/s/req':>10}{'tok/s':>9}{'acc.len':>8}")
    print(f"{name:<9}{m['ok']:>5}{s['errors']['count']:>5}{f(m['ttft_ms']):>10}{f(m['ttfo_ms']):>10}"
          f"{f(m['tpot_ms']):>10}{f(m['e2e_ms']):>10}{f(m['output_tokens_per_s']):>10}"
          f"{m['aggregate_output_tokens_per_s']:>9.1f}{al:>8}")


def add_parser(sub) -> None:
    p = sub.add_parser("aa", help="Artificial Analysis workload shapes against an OpenAI-compatible endpoint")
    p.add_argument("--endpoint", required=True, help="base URL, e.g. http://localhost:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--shapes", default="aa-1k", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--mode", choices=["synthetic", "dataset-replay"], default="synthetic")
    p.add_argument("--dataset", help="dataset-replay: JSONL of {'prompt'} (written on first use, then replayed)")
    p.add_argument("--concurrency", type=int, default=1, help="1 = single prompt, 10 = parallel prompts")
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the shape's token counts (tests, CPUs)")
    p.add_argument("--driver", choices=["builtin", "aiperf"], default="builtin")
    p.add_argument("--dry-run", action="store_true", help="print what would run (the AIPerf command line)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    p.add_argument("--encoding-file", help="o200k_base.tiktoken for exact token counts (else approximate)")
    p.add_argument("--tokenizer", help="--driver aiperf: a Hugging Face tokenizer folder (or hub name) for AIPerf; "
                   "without it, --encoding-file selects AIPerf's builtin o200k_base tokenizer")
    p.add_argument("--aiperf", help="the aiperf executable (default: .venv-aiperf/bin/aiperf, else aiperf on PATH)")
    p.add_argument("--no-force-length", action="store_true", help="no min_tokens/ignore_eos (providers that reject them)")
    p.add_argument("--reasoning-model", action="store_true", help="warn when no reasoning field streams (TTFT == TTFO)")
    p.add_argument("--prewarm", action="store_true")
    p.add_argument("--burn-in", type=int, default=0, help="requests run first and discarded")
    p.add_argument("--settle-s", type=float, default=0.0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/aa")
    p.add_argument("--trial", type=int, help="trial index N: write under <out>/<shape>/trial-N/ (for specdec decide)")
    p.set_defaults(func=aa_command)
