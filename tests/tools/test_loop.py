"""`specdec loop` without a server: state file, lock, drift, gates that fail closed, resume, the controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdec_profiler.errors import UsageError
from specdec_profiler.loop import drift as drift_mod
from specdec_profiler.loop import promote
from specdec_profiler.loop.state import ServiceState, StateLock, load, parse_config, save
from specdec_profiler.synth_traffic import generate

CHAT_MIX = {"chat": 0.7, "code": 0.1, "rewrite": 0.2}
CODE_MIX = {"code": 0.8, "chat": 0.1, "structured": 0.1}


def loop(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "loop", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def state_of(workdir: Path) -> dict:
    return json.loads((workdir / "service-state.json").read_text())


@pytest.fixture(scope="module")
def target(tiny_models) -> str:
    return str(tiny_models[0])


# ---------------------------------------------------------------------------- state
def test_state_round_trips_and_a_bad_file_names_the_field(tmp_path):
    p = tmp_path / "service-state.json"
    st = ServiceState(target="/m", served_deploy="local", standing_config={"method": "ngram"})
    st.event("created")
    save(p, st)
    doc = json.loads(p.read_text())
    assert doc["schema"] == "specdec_service_v1"
    assert set(doc) >= {"experiment_id", "target", "served_deploy", "standing_config", "champion_draft",
                        "last_profile_sha256", "last_ab_verdict", "history"}
    assert load(p).standing_config == {"method": "ngram"}
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temp file left behind
    doc.pop("target")
    p.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="target"):
        load(p)


def test_a_second_loop_on_the_same_state_is_refused(tmp_path):
    p = tmp_path / "service-state.json"
    with StateLock(p):
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            with StateLock(p):
                pass
    with StateLock(p):  # released
        pass


@pytest.mark.parametrize("text, expect", [("none", None), ("{}", None), ('{"method":"ngram"}', {"method": "ngram"})])
def test_standing_config_parses(text, expect):
    assert parse_config(text) == expect


@pytest.mark.parametrize("text, msg", [("{not json", "not valid JSON"), ('{"k": 1}', "'method'"),
                                       ("/no/such/file.json", "neither JSON nor a file")])
def test_bad_standing_config_is_named(text, msg):
    with pytest.raises(UsageError, match=msg):
        parse_config(text)


# ---------------------------------------------------------------------------- drift
def _profile(tmp_path: Path, name: str, mix: dict, seed: int, n: int = 200) -> dict:
    log, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.profile.json"
    generate(log, n, mix, seed=seed)
    r = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "profile", "--in", str(log), "--out", str(out),
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def test_drift_is_small_for_the_same_traffic_and_large_when_the_mix_changes(tmp_path):
    a1, a2 = _profile(tmp_path, "a1", CHAT_MIX, 1), _profile(tmp_path, "a2", CHAT_MIX, 2)
    b = _profile(tmp_path, "b", CODE_MIX, 3)
    same = drift_mod.drift(a1, a2)
    changed = drift_mod.drift(a1, b)
    assert same["drift"] < 0.06, same  # the documented noise level of re-profiling the same traffic
    assert changed["drift"] > drift_mod.DEFAULT_THRESHOLD, changed
    assert changed["parts"]["content_class_mix"] == pytest.approx(0.8, abs=0.01)  # 0.5 * (0.6 + 0.7 + 0.2 + 0.1)
    assert drift_mod.drift(a1, a1)["drift"] == 0.0


# ---------------------------------------------------------------------------- candidates
def test_candidate_is_tilespec_where_the_adapter_supports_the_drafter():
    cfg, note = promote.candidate_config("ngram", None)
    assert cfg["method"] == "tilespec" and cfg["base"] == "ngram"
    cfg, note = promote.candidate_config("eagle3", "/d")
    assert cfg == {"method": "tilespec", "base": "eagle3", "num_speculative_tokens": 3, "model": "/d"}
    assert "K chosen per request" in note
    mtp, note = promote.candidate_config("mtp", None)  # a drafter the adapter does not run under tilespec yet
    assert mtp == {"method": "mtp", "num_speculative_tokens": 1} and "fixed K=1" in note
    r = promote.render(cfg, "/t", "/d")
    assert "--speculative-config" in r["vllm"] and "--speculative-algorithm TILESPEC" in r["sglang"]
    with pytest.raises(UsageError, match="predicted_outputs"):
        promote.candidate_config("predicted_outputs", None)


# ---------------------------------------------------------------------------- gates
def test_prerequisites_fail_closed_and_name_what_is_missing(tmp_path, target):
    log = tmp_path / "a.jsonl"
    generate(log, 30, CHAT_MIX, seed=1)
    r = loop("--target", str(tmp_path / "nope"), "--profile", str(log), "--method", "dflash", "--workdir", "w",
             cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "no config.json" in r.stdout and "no local dflash trainer" in r.stdout
    st = state_of(tmp_path / "w")
    assert st["current"]["phases"]["0"]["status"] == "red" and st["current"]["finished"]
    assert (Path(st["current"]["evidence_dir"]) / "report.md").read_text().count("red gate") == 1
    r = loop("--target", target, "--aa-shapes", "--method", "eagle3", "--workdir", "w2", cwd=tmp_path)
    assert r.returncode == 3 and "synthetic shapes hold no text" in r.stdout
    r = loop("--target", target, "--profile", str(log), "--method", "ngram", "--served", "http://127.0.0.1:9",
             "--workdir", "w3", cwd=tmp_path)
    assert r.returncode == 3 and "--candidate-url" in r.stdout
    r = loop("--target", target, "--profile", str(log), "--method", "ngram", "--workdir", "w4", "--min-requests", "100",
             cwd=tmp_path)
    assert r.returncode == 3 and "fewer than --min-requests 100" in r.stdout
    assert state_of(tmp_path / "w4")["current"]["phases"]["0"]["status"] == "done"


# ---------------------------------------------------------------------------- resume
def _alive_trainers(root: Path, wait_s: float = 10.0) -> list[int]:
    import psutil

    deadline = time.time() + wait_s
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(root) in cmd and " train " in f" {cmd} " and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.info["pid"])
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def test_a_killed_loop_resumes_at_the_phase_it_was_in(tmp_path, target):
    log = tmp_path / "a.jsonl"
    generate(log, 60, CHAT_MIX, seed=1)
    args = ["--target", target, "--profile", str(log), "--method", "eagle3", "--workdir", "w", "--until-phase", "3",
            "--train-args=--steps 4 --batch 4 --eval-rows 4 --checkpoint-every 2 --no-gate"]  # resume, not quality
    proc = subprocess.Popen([sys.executable, "-m", "specdec_profiler.cli", "loop", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_file = tmp_path / "w" / "service-state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists() and "2" in (json.loads(state_file.read_text()).get("current") or {}).get("phases", {}):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # mid phase 3
    proc.wait()
    assert not _alive_trainers(tmp_path), "the trainer outlived the killed loop"
    before = state_of(tmp_path / "w")
    assert set(before["current"]["phases"]) == {"0", "1", "2"}
    corpus = Path(before["current"]["phases"]["2"]["outputs"]["corpus"])
    mtime = corpus.stat().st_mtime_ns
    r = loop(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stderr and "phase 1 (profile) ..." not in r.stderr
    after = state_of(tmp_path / "w")
    assert after["current"]["experiment_id"] == before["current"]["experiment_id"]
    assert after["current"]["phases"]["3"]["status"] == "done"
    assert corpus.stat().st_mtime_ns == mtime  # phase 2 was not redone
    draft = Path(after["current"]["phases"]["3"]["outputs"]["draft"])
    assert json.loads((draft / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3"]


# ---------------------------------------------------------------------------- controller
def _append(log: Path, mix: dict, seed: int, n: int = 100) -> None:
    tmp = log.with_suffix(".part")
    generate(tmp, n, mix, seed=seed)
    with open(log, "ab") as f:
        f.write(tmp.read_bytes())


def test_controller_retrains_on_drift_and_does_nothing_on_unchanged_traffic(tmp_path, target):
    log = tmp_path / "access.jsonl"
    base = ["--target", target, "--profile", str(log), "--method", "eagle3", "--mode", "controller", "--workdir", "w",
            "--interval-s", "0", "--until-phase", "3", "--min-requests", "50",
            "--train-args=--steps 4 --batch 4 --eval-rows 4 --no-gate"]
    _append(log, CHAT_MIX, 1)
    r = loop(*base, "--max-cycles", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = state_of(tmp_path / "w")
    assert st["controller"]["last_action"].startswith("reference profile set") and st["current"] is None
    _append(log, CHAT_MIX, 2)  # same traffic: nothing happens
    r = loop(*base, "--max-cycles", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = state_of(tmp_path / "w")
    assert st["controller"]["last_action"].startswith("no drift") and st["current"] is None
    assert st["controller"]["last_drift"] < drift_mod.DEFAULT_THRESHOLD
    _append(log, CODE_MIX, 3)  # the mix changes half-way: drift, retrain
    r = loop(*base, "--max-cycles", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = state_of(tmp_path / "w")
    assert st["controller"]["last_drift"] > drift_mod.DEFAULT_THRESHOLD
    assert st["current"]["trigger"].startswith("drift")
    assert st["current"]["phases"]["3"]["status"] == "done"  # the retrain ran
    assert any(e["event"] == "drift" for e in st["history"])
    prom = (tmp_path / "w" / "controller" / "metrics.prom").read_text()
    assert "specdec_loop_drift " in prom and "specdec_loop_cycles_total 1.0" in prom


def test_controller_stops_cleanly_on_sigterm(tmp_path, target):
    log = tmp_path / "access.jsonl"
    _append(log, CHAT_MIX, 1, n=60)
    proc = subprocess.Popen([sys.executable, "-m", "specdec_profiler.cli", "loop", "--target", target, "--profile",
                             str(log), "--method", "ngram", "--mode", "controller", "--workdir", "w", "--interval-s",
                             "600", "--min-requests", "50"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    state_file = tmp_path / "w" / "service-state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state_file.exists() and json.loads(state_file.read_text())
                                          ["controller"]["cycles"] >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    st = state_of(tmp_path / "w")
    assert st["controller"]["cycles"] == 1 and st["controller"]["reference_profile"]
    assert "SIGTERM" in err
