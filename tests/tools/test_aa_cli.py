"""`specdec aa` without an engine: the shape table, AIPerf command lines, and every failure counted, never fatal."""

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from specdec_profiler.aa import SHAPES
from specdec_profiler.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def specdec(*args, env=None):
    return subprocess.run([sys.executable, "-m", "specdec_profiler.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_readme_shape_table_matches_the_code():
    rows = re.findall(r"^\| `(aa-\d+k)` \| ([\d,]+) \| ([\d,]+) \|", (ROOT / "README.md").read_text(), re.M)
    table = {n: (int(i.replace(",", "")), int(o.replace(",", ""))) for n, i, o in rows}
    assert table == {n: (s.input_tokens, s.output_tokens) for n, s in SHAPES.items()}


@pytest.mark.parametrize("mode", ["synthetic", "dataset-replay"])
def test_aiperf_dry_run_prints_one_command_per_shape(tmp_path, mode):
    out = specdec("aa", "--endpoint", "http://gpu-box:8000", "--model", "m", "--shapes", "aa-1k,aa-10k,aa-100k",
                  "--mode", mode, "--concurrency", "10", "--requests", "20", "--driver", "aiperf", "--dry-run",
                  "--scale", "0.01", "--out", str(tmp_path), "--api-key-env", "HOME")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("aiperf profile")]
    assert len(lines) == 3
    for ln, (name, shape) in zip(lines, SHAPES.items()):
        assert "--url gpu-box:8000" in ln and "--endpoint-type chat" in ln and "--streaming" in ln
        assert "--concurrency 10" in ln and "--request-count 20" in ln
        assert f"--output-tokens-mean {int(shape.output_tokens * 0.01)}" in ln
        assert f"min_tokens:{int(shape.output_tokens * 0.01)}" in ln and "ignore_eos:true" in ln
        if mode == "synthetic":
            assert f"--synthetic-input-tokens-mean {int(shape.input_tokens * 0.01)}" in ln
        else:
            assert "--input-file" in ln and "--custom-dataset-type single_turn" in ln
        assert "--api-key $HOME" in ln            # the variable's name, never its value
    assert str(Path.home()) not in out.stdout


def test_bad_input_is_a_clear_error(tmp_path):
    out = specdec("aa", "--endpoint", "http://x", "--model", "m", "--shapes", "aa-2k", "--out", str(tmp_path))
    assert out.returncode == 2 and "unknown aa-2k" in out.stderr
    out = specdec("aa", "--endpoint", "http://x", "--model", "m", "--api-key-env", "NO_SUCH_VAR_XYZ",
                  "--out", str(tmp_path))
    assert out.returncode == 2 and "NO_SUCH_VAR_XYZ" in out.stderr
    out = specdec("aa", "--endpoint", "http://x", "--model", "m", "--scale", "2", "--out", str(tmp_path))
    assert out.returncode == 2 and "--scale" in out.stderr


class _Faulty(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that fails in the ways real ones do, chosen by the request index."""
    calls = 0

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(404)
        self.end_headers()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        type(self).calls += 1
        kind = type(self).calls % 5
        if kind == 1:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        if kind == 2:
            self.send_response(429)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"delta": {"content": "hi "}}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()
        if kind == 3:            # stream dropped: no [DONE]
            return
        if kind == 4:            # stalls past the client's timeout
            time.sleep(3)
            return
        usage = {"choices": [], "usage": {"completion_tokens": 2, "prompt_tokens": 5}}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())


def test_errors_are_counted_and_never_crash_the_run(tmp_path):
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), _Faulty)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = specdec("aa", "--endpoint", f"http://127.0.0.1:{port}", "--model", "m", "--shapes", "aa-1k",
                      "--scale", "0.01", "--requests", "10", "--concurrency", "5", "--timeout-s", "1.5",
                      "--out", str(tmp_path))
    finally:
        srv.shutdown()
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "aa-1k" / "summary.json").read_text())
    by = s["errors"]["by_kind"]
    assert s["metrics"]["ok"] == 2 and s["errors"]["count"] == 8
    assert by == {"http_500": 2, "http_429": 2, "stream_ended_early": 2, "timeout": 2}
    assert s["spec_decode"]["metrics_available"] is False and s["spec_decode"]["acceptance_length"] is None
    assert "approximate" in " ".join(s["warnings"]) and s["context"]["token_counting"]["approximate"] is True
    assert len((tmp_path / "aa-1k" / "records.jsonl").read_text().splitlines()) == 10


def test_no_server_at_all_is_counted_as_connection_errors(tmp_path):
    out = specdec("aa", "--endpoint", f"http://127.0.0.1:{free_port()}", "--model", "m", "--scale", "0.01",
                  "--requests", "3", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "aa-1k" / "summary.json").read_text())
    assert s["errors"] == {"count": 3, "by_kind": {"connection": 3}} and s["metrics"]["ttft_ms"] is None
