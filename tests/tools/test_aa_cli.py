"""`specdec aa` without an engine: the shape table, AIPerf command lines, and every failure counted, never fatal."""

import json
import re
import shlex
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


AIPERF_PY = ROOT / ".venv-aiperf" / "bin" / "python"


def _aiperf_dry_run(tmp_path, mode, *extra):
    out = specdec("aa", "--endpoint", "http://gpu-box:8000", "--model", "m", "--shapes", "aa-1k,aa-10k,aa-100k",
                  "--mode", mode, "--concurrency", "10", "--requests", "20", "--driver", "aiperf", "--dry-run",
                  "--scale", "0.01", "--out", str(tmp_path), "--api-key-env", "HOME", "--tokenizer", "/tok", *extra)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if re.match(r"\S*aiperf profile ", ln)]
    assert len(lines) == 3, out.stdout
    assert str(Path.home()) not in out.stdout
    return lines


@pytest.mark.parametrize("mode", ["synthetic", "dataset-replay"])
def test_aiperf_dry_run_prints_one_command_per_shape(tmp_path, mode):
    for ln, (name, shape) in zip(_aiperf_dry_run(tmp_path, mode), SHAPES.items()):
        assert "--url http://gpu-box:8000" in ln and "--endpoint-type chat" in ln and "--streaming" in ln
        assert "--use-server-token-count" in ln and "--tokenizer /tok" in ln
        assert "--concurrency 10" in ln and "--request-count 20" in ln
        assert f"--prompt-output-tokens-mean {int(shape.output_tokens * 0.01)}" in ln
        assert f"min_tokens:{int(shape.output_tokens * 0.01)}" in ln and "ignore_eos:true" in ln
        assert f"--output-artifact-dir {tmp_path / name / 'aiperf'}" in ln
        if mode == "synthetic":
            assert f"--prompt-input-tokens-mean {int(shape.input_tokens * 0.01)}" in ln
        else:
            assert f"--input-file {tmp_path / name / 'dataset.aiperf.jsonl'}" in ln
            assert "--custom-dataset-type single_turn" in ln and "--dataset-sampling-strategy sequential" in ln
        assert '--api-key "$HOME"' in ln            # the variable's name, never its value
    assert not any(tmp_path.iterdir())              # a dry run writes nothing


@pytest.mark.skipif(not AIPERF_PY.is_file(), reason=".venv-aiperf missing (make aiperf-venv)")
@pytest.mark.parametrize("mode", ["synthetic", "dataset-replay"])
def test_aiperf_accepts_the_command_line(tmp_path, mode):
    """AIPerf 0.13.0's own CLI parser and config resolution take every dry-run line, meaning what we mean."""
    lines = _aiperf_dry_run(tmp_path, mode)
    argvs = [shlex.split(ln.replace('"$HOME"', "sk-test"))[1:] for ln in lines]
    if mode == "dataset-replay":  # AIPerf checks that the file exists
        for name in SHAPES:
            (tmp_path / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "dataset.aiperf.jsonl").write_text('{"text": "hello"}\n')
    out = subprocess.run([str(AIPERF_PY), str(ROOT / "tests" / "tools" / "aiperf_resolve.py")],
                         input=json.dumps(argvs), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    resolved = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("[")]
    assert len(resolved) == 3
    for (cfg,), (name, shape) in zip(resolved, SHAPES.items()):
        ep, (ds,), (phase,) = cfg["endpoint"], cfg["datasets"], cfg["phases"]
        osl = int(shape.output_tokens * 0.01)
        assert ep["urls"] == ["http://gpu-box:8000"] and ep["type"] == "chat" and ep["streaming"] is True
        assert ep["use_server_token_count"] is True and ep["api_key_set"] is True and ep["timeout"] == 600.0
        assert ep["extra"] == {"temperature": 0, "top_p": 1, "min_tokens": osl, "ignore_eos": True}
        assert cfg["models"]["items"] == [{"name": "m"}] and cfg["tokenizer"]["name"] == "/tok"
        assert phase["kind"] == "profiling" and phase["type"] == "concurrency"
        assert phase["requests"] == 20 and phase["concurrency"] == 10
        assert cfg["artifacts"]["dir"] == str(tmp_path / name / "aiperf")
        assert cfg["gpu_telemetry"]["enabled"] is False
        if mode == "synthetic":
            assert ds["type"] == "synthetic" and ds["random_seed"] == 0
            assert ds["prompts"]["isl"] == {"mean": int(shape.input_tokens * 0.01), "stddev": 0.0}
            assert ds["prompts"]["osl"] == {"mean": osl, "stddev": 0.0}
        else:
            assert ds["type"] == "file" and ds["format"] == "single_turn" and ds["sampling"] == "sequential"
            assert ds["path"] == str(tmp_path / name / "dataset.aiperf.jsonl")
            assert ds["osl"] == {"mean": osl, "stddev": 0.0}


def test_aiperf_driver_needs_a_tokenizer(tmp_path):
    out = specdec("aa", "--endpoint", "http://x", "--model", "m", "--driver", "aiperf", "--out", str(tmp_path))
    assert out.returncode == 2 and "--tokenizer" in out.stderr


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
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi "}}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()
        if kind == 3:            # stream dropped: no [DONE]
            return
        if kind == 4:            # stalls past the client's timeout
            time.sleep(3)
            return
        usage = {"object": "chat.completion.chunk", "choices": [],
                 "usage": {"completion_tokens": 2, "prompt_tokens": 5}}
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


@pytest.mark.skipif(not AIPERF_PY.is_file(), reason=".venv-aiperf missing (make aiperf-venv)")
def test_aiperf_driver_counts_the_same_errors(tmp_path, tiny_models):
    """The real AIPerf against the faulty endpoint: the same error kinds as the builtin driver, run completes."""
    _Faulty.calls = 0
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), _Faulty)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = specdec("aa", "--driver", "aiperf", "--tokenizer", str(tiny_models[0]), "--endpoint",
                      f"http://127.0.0.1:{port}", "--model", "m", "--shapes", "aa-1k", "--scale", "0.01",
                      "--requests", "10", "--concurrency", "5", "--timeout-s", "1.5", "--out", str(tmp_path))
    finally:
        srv.shutdown()
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "aa-1k" / "summary.json").read_text())
    assert s["metrics"]["ok"] == 2 and s["errors"]["count"] == 8
    assert s["errors"]["by_kind"] == {"http_500": 2, "http_429": 2, "stream_ended_early": 2, "timeout": 2}
    assert s["context"]["driver"] == "aiperf 0.13.0" and s["spec_decode"]["metrics_available"] is False
    assert len((tmp_path / "aa-1k" / "records.jsonl").read_text().splitlines()) == 10
    out = specdec("aa", "--driver", "aiperf", "--tokenizer", str(tiny_models[0]), "--endpoint",
                  f"http://127.0.0.1:{free_port()}", "--model", "m", "--scale", "0.01", "--requests", "3",
                  "--out", str(tmp_path / "none"))
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "none" / "aa-1k" / "summary.json").read_text())
    assert s["errors"] == {"count": 3, "by_kind": {"connection": 3}} and s["metrics"]["ttft_ms"] is None
    assert any("aiperf exited with 1" in w for w in s["warnings"])


def test_no_server_at_all_is_counted_as_connection_errors(tmp_path):
    out = specdec("aa", "--endpoint", f"http://127.0.0.1:{free_port()}", "--model", "m", "--scale", "0.01",
                  "--requests", "3", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    s = json.loads((tmp_path / "aa-1k" / "summary.json").read_text())
    assert s["errors"] == {"count": 3, "by_kind": {"connection": 3}} and s["metrics"]["ttft_ms"] is None
