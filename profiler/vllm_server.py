"""Start and stop a real ``vllm serve`` for tests and benchmarks (loopback only, bounded in time).

    with VLLMServer(model_dir, speculative_config={"method": "tilespec", ...}) as srv:
        httpx.post(f"{srv.url}/v1/completions", json={...})
        srv.metrics()          # parsed /metrics samples

The server runs in its own process group with its log in a file; leaving the
``with`` block (or an exception, or the time limit) terminates the whole group
(SIGTERM, then SIGKILL). ``VLLM_CPU_KVCACHE_SPACE`` defaults to 2 GiB so that a
server starts while other processes hold memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{label="v",...}': value} (labels sorted, as printed), comments dropped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of every series of ``name`` (all label sets)."""
    total = 0.0
    for key, v in samples.items():
        base = key.split("{", 1)[0]
        if base == name:
            total += v
    return total


SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")


def spec_window(before: dict | None, after: dict | None) -> dict:
    """Acceptance over the window between two scrapes; null fields when speculation did not run."""
    out = {"acceptance_length": None, "accept_rate": None, "drafts": 0, "draft_tokens": 0, "accepted_tokens": 0,
           "specdec": {}, "metrics_available": before is not None and after is not None}
    if not out["metrics_available"]:
        return out

    def delta(name):
        series = name + "_total" if any(k.startswith(name + "_total") for k in after) else name
        return metric_sum(after, series) - metric_sum(before, series)

    drafts, dtoks, acc = (delta(n) for n in SPEC_COUNTERS)
    out.update(drafts=int(drafts), draft_tokens=int(dtoks), accepted_tokens=int(acc))
    if drafts > 0:
        out["acceptance_length"] = 1.0 + acc / drafts
        out["accept_rate"] = acc / dtoks if dtoks > 0 else None
    names = {k.split("{", 1)[0] for k in after if k.startswith("specdec_")}
    for n in sorted(names):
        if n.endswith(("_total", "_count", "_sum")):
            out["specdec"][n] = metric_sum(after, n) - metric_sum(before or {}, n)
    return out


class ServerError(RuntimeError):
    pass


class VLLMServer:
    def __init__(self, model: str | Path, speculative_config: dict | None = None, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, log_path: str | Path | None = None,
                 start_timeout_s: float = 240.0, max_model_len: int = 1024, dtype: str = "float32",
                 served_model_name: str | None = None):
        self.model = str(model)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served_model_name = served_model_name or "tiny"
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        args = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", self.model,
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", dtype,
                "--max-model-len", str(max_model_len), "--enforce-eager", "--seed", "0",
                "--served-model-name", self.served_model_name]
        if speculative_config is not None:
            args += ["--speculative-config", json.dumps(speculative_config)]
        self.args = args + list(extra_args or [])
        self.env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", **(env or {})}
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.started_s: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "VLLMServer":
        import httpx

        self._log = open(self.log_path, "w")
        t0 = time.monotonic()
        from .child_process import new_session_dying_with_parent

        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     preexec_fn=new_session_dying_with_parent)
        deadline = t0 + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"vllm serve exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2.0).status_code == 200:
                    self.started_s = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"vllm serve did not answer within {self.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            try:  # the API server is gone; make sure no engine core is left behind
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        import httpx

        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10.0).text)

    def complete(self, prompt: str, max_tokens: int = 32, **extra: Any) -> dict:
        import httpx

        body = {"model": self.served_model_name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                **extra}
        r = httpx.post(f"{self.url}/v1/completions", json=body, timeout=120.0)
        r.raise_for_status()
        return r.json()
