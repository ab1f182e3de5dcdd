"""`specdec tune`: the search algorithms, the champion rule, the durable ledger and resume, the dry run, bad input.

The trial runner here is the deterministic SyntheticRunner (a pure function of the config) or small stubs:
these tests check the search, not a trainer or an engine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from specdec_profiler.cli import main
from specdec_profiler.errors import UsageError
from specdec_profiler.tune import engine, hyperband as hb, ledger as lg, space as sp
from specdec_profiler.tune.runner import SyntheticRunner, TrainRecord, TrialRunner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tune-space.eagle3.json"

SMALL = {
    "params": {"global_batch": {"values": [8, 16, 32]}, "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
               "warmup_ratio": {"values": [0.0, 0.05]}},
    "budget": {"max_samples": 9000, "min_samples": 1000, "eta": 3},
    "hardware": {"gpus": 4, "max_per_device_batch": 2},
    "baseline": {"global_batch": 16, "learning_rate": 1e-4, "warmup_ratio": 0.015},
    "promote": 2, "noise": 0.05, "n_trials": 5,
}


def _space(**over) -> sp.Space:
    raw = json.loads(json.dumps(SMALL))
    raw.update(over)
    return sp.parse_space(raw)


# ------------------------------------------------------------------------------------------ hyperband plan
def test_hyperband_plan_matches_the_paper():
    # Li et al. 2018, Table 1: R = 81, eta = 3 (min rung 1)
    plan = hb.plan(81, 1, 3)
    got = [[(r.n_configs, r.samples) for r in b.rungs] for b in plan]
    assert got == [
        [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
        [(34, 3), (11, 9), (3, 27), (1, 81)],
        [(15, 9), (5, 27), (1, 81)],
        [(8, 27), (2, 81)],
        [(5, 81)],
    ]
    assert [b.s for b in plan] == [4, 3, 2, 1, 0]


def test_hyperband_plan_in_samples():
    plan = hb.plan(270000, 10000, 3)  # s_max = floor(log3 27) = 3
    assert [b.n_configs for b in plan] == [27, 12, 6, 4]
    assert [r.samples for r in plan[0].rungs] == [10000, 30000, 90000, 270000]
    assert all(b.rungs[-1].samples == 270000 for b in plan)
    assert plan[-1].samples_spent() == 4 * 270000
    assert plan[0].samples_spent() == 27 * 10000 + 9 * 20000 + 3 * 60000 + 1 * 180000
    with pytest.raises(ValueError):
        hb.plan(100, 200, 3)


def test_keep_top_kills_the_bottom():
    scores = {f"t{i}": s for i, s in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])}
    keep, killed = hb.keep_top(scores, hb.n_keep(9, 3))
    assert keep == ["t1", "t5", "t3"] and len(killed) == 6  # bottom 1 - 1/eta
    keep, _ = hb.keep_top({"b": 1.0, "a": 1.0, "c": 0.0}, 1)
    assert keep == ["a"]  # ties by id: deterministic
    assert hb.n_keep(2, 3) == 1


def test_hyperband_run_follows_the_plan(tmp_path):
    space = _space()
    led = lg.Ledger(tmp_path / "l.jsonl")
    t = engine.Tuner(space, "hyperband", SyntheticRunner(), led, tmp_path / "w", seed=3, log=lambda m: None)
    result = t.run()
    plan = hb.plan(9000, 1000, 3)
    rungs = [r for r in led.records if r["type"] == "rung" and r["trial"].startswith("hb-")]
    for b in plan:
        for i, rung in enumerate(b.rungs):
            n = sum(1 for r in rungs if r["bracket"] == b.s and r["rung"] == i)
            assert n == rung.n_configs, (b.s, i)
    # survivors of each cut are the best by the proxy at that rung
    for b in plan:
        for i in range(len(b.rungs) - 1):
            here = {r["trial"]: r["proxy"] for r in rungs if r["bracket"] == b.s and r["rung"] == i}
            nxt = {r["trial"] for r in rungs if r["bracket"] == b.s and r["rung"] == i + 1}
            assert nxt == set(hb.keep_top(here, b.rungs[i + 1].n_configs)[0])
    assert result["verdict"] in ("improvement", "no-improvement")
    assert len(result["promoted"]) == 2


# ------------------------------------------------------------------------------------------ space
def test_batch_mapping():
    assert sp.batch_mapping(64, 8, 4) == (4, 2)
    assert sp.batch_mapping(64, 8, 8) == (8, 1)
    assert sp.batch_mapping(24, 4, 4) == (3, 2) or sp.batch_mapping(24, 4, 4) == (6, 1)
    assert sp.batch_mapping(24, 4, 4) == (3, 2)
    assert sp.batch_mapping(7, 1, 2) == (1, 7)
    assert sp.batch_mapping(64, 8, 4, accumulation=4) == (2, 4)
    with pytest.raises(UsageError, match="not divisible"):
        sp.batch_mapping(12, 8, 4)
    with pytest.raises(UsageError, match="max 2"):
        sp.batch_mapping(64, 8, 2, accumulation=1)


def test_grid_and_random_are_deterministic():
    space = _space()
    base = sp.baseline_config(space)
    ok1, bad1 = sp.grid(space, base)
    ok2, _ = sp.grid(space, base)
    assert ok1 == ok2 and len(ok1) + len(bad1) == 3 * 3 * 2  # lr range -> 3 grid points
    assert all(sp.feasible(space, c) for c in ok1)
    a, _ = engine.flat_trials(space, "random", 7, base, 6)
    b, _ = engine.flat_trials(space, "random", 7, base, 6)
    c, _ = engine.flat_trials(space, "random", 8, base, 6)
    assert [t.config for t in a] == [t.config for t in b] != [t.config for t in c]
    h1 = engine.hyperband_trials(space, 1, base)
    h2 = engine.hyperband_trials(space, 1, base)
    assert [[t.id for t in ts] for _, ts in h1] == [[t.id for t in ts] for _, ts in h2]


def test_accumulation_in_space_marks_infeasible_points():
    space = _space(params={"global_batch": {"values": [8, 16]}, "accumulation": {"values": [1, 2, 4]}})
    ok, bad = sp.grid(space, sp.baseline_config(space))
    # 4 GPUs, max 2 per device: 8 -> acc 1 (2/dev), 2 (1/dev); 16 -> acc 2 (2/dev), 4 (1/dev)
    assert sorted((c["global_batch"], c["accumulation"]) for c in ok) == [(8, 1), (8, 2), (16, 2), (16, 4)]
    assert sorted((c["global_batch"], c["accumulation"]) for c in bad) == [(8, 4), (16, 1)]


@pytest.mark.parametrize("patch,needle", [
    ({"params": {"lerning_rate": {"values": [1e-4]}}}, "params.lerning_rate: unknown key"),
    ({"budget": {"max_samples": 100, "etaa": 3}}, "budget.etaa: unknown key"),
    ({"promte": 3}, "promte: unknown key"),
    ({"params": {"global_batch": {"values": [8.5]}}}, "params.global_batch"),
    ({"params": {"learning_rate": {"low": 1e-3, "high": 1e-5}}}, "params.learning_rate"),
    ({"baseline": {"lr": 1e-4}}, "baseline.lr: unknown key"),
])
def test_bad_space_names_the_key(tmp_path, capsys, patch, needle):
    raw = json.loads(json.dumps(SMALL))
    raw.update(patch)
    p = tmp_path / "space.json"
    p.write_text(json.dumps(raw))
    assert main(["tune", "--space", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("specdec: error:"), err


def test_example_space_is_valid(capsys):
    assert main(["tune", "--space", str(EXAMPLE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bracket s=3: 27 x 10000  9 x 30000  3 x 90000  1 x 270000" in out
    assert "per device x 8 GPU(s)" in out


# ------------------------------------------------------------------------------------------ champion rule
class _Stub:
    """Proxy and objective from tables keyed by learning rate: a stub runner (tests the decision only)."""

    name = "stub"

    def __init__(self, proxy, objective):
        self.proxy, self.objective = proxy, objective

    def train(self, config, until_samples, workdir, resume):
        workdir.mkdir(parents=True, exist_ok=True)
        lr = config["learning_rate"]
        return TrainRecord([0.5], 1.0, until_samples, self.proxy[lr], str(workdir / f"lr{lr}"))

    def measure(self, export_dir):
        return self.objective[float(export_dir.rsplit("lr", 1)[1])]


def _grid_space():
    return _space(params={"learning_rate": {"values": [1e-5, 1e-4, 3e-4, 1e-3]}}, promote=3,
                  baseline={"global_batch": 16, "learning_rate": 1e-4, "warmup_ratio": 0.015})


def test_champion_is_decided_on_the_objective_only(tmp_path):
    assert isinstance(_Stub({}, {}), TrialRunner)
    proxy = {1e-5: 0.1, 1e-4: 0.5, 3e-4: 0.9, 1e-3: 0.8}        # proxy prefers 3e-4
    objective = {1e-5: 1.0, 1e-4: 2.0, 3e-4: 2.1, 1e-3: 2.6}    # serving prefers 1e-3
    r = engine.Tuner(_grid_space(), "grid", _Stub(proxy, objective), lg.Ledger(tmp_path / "l"), tmp_path,
                     log=lambda m: None).run()
    assert r["verdict"] == "improvement"
    assert r["champion"]["config"]["learning_rate"] == 1e-3 and r["champion"]["objective"] == 2.6
    assert [p["config"]["learning_rate"] for p in r["promoted"]] == [3e-4, 1e-3, 1e-4]


def test_tie_within_noise_is_no_improvement(tmp_path):
    proxy = {1e-5: 0.1, 1e-4: 0.5, 3e-4: 0.9, 1e-3: 0.8}
    objective = {1e-5: 1.0, 1e-4: 2.0, 3e-4: 2.04, 1e-3: 1.9}  # best beats the baseline (1e-4) by 0.04 <= 0.05
    r = engine.Tuner(_grid_space(), "grid", _Stub(proxy, objective), lg.Ledger(tmp_path / "l"), tmp_path,
                     log=lambda m: None).run()
    assert r["verdict"] == "no-improvement"
    assert r["champion"]["trial"].startswith("baseline-") and r["champion"]["objective"] == 2.0
    assert any(t.startswith("grid-") for t in r["ties_within_noise"])


# ------------------------------------------------------------------------------------------ ledger
def test_ledger_appends_with_fsync_and_cuts_a_torn_line(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(lg.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    p = tmp_path / "l.jsonl"
    led = lg.Ledger(p)
    led.append({"type": "rung", "trial": "a", "samples": 1, "proxy": 0.5})
    led.append({"type": "measure", "trial": "a", "objective": 2.0})
    assert len(synced) == 2 and len(p.read_text().splitlines()) == 2
    led.close()
    with open(p, "a") as fh:
        fh.write('{"type": "rung", "trial": "b", "sam')  # killed mid-write
    led = lg.Ledger(p)
    assert [r["trial"] for r in led.records] == ["a", "a"] and led.rung("a", 1)["proxy"] == 0.5
    led.append({"type": "rung", "trial": "c", "samples": 1, "proxy": 0.1})
    led.close()
    assert [json.loads(x)["trial"] for x in p.read_text().splitlines()] == ["a", "a", "c"]


def test_resume_refuses_another_tune(tmp_path):
    led = lg.Ledger(tmp_path / "l")
    engine.Tuner(_space(), "random", SyntheticRunner(), led, tmp_path, seed=1, log=lambda m: None).run()
    led.close()
    with pytest.raises(UsageError, match="another tune"):
        engine.Tuner(_space(), "random", SyntheticRunner(), lg.Ledger(tmp_path / "l"), tmp_path, seed=2,
                     log=lambda m: None).run()


def test_rerun_of_a_finished_tune_repeats_nothing(tmp_path):
    calls = tmp_path / "calls.jsonl"
    led = lg.Ledger(tmp_path / "l")
    r1 = engine.Tuner(_space(), "hyperband", SyntheticRunner(calls_log=calls), led, tmp_path / "w", seed=5,
                      log=lambda m: None).run()
    led.close()
    n = len(calls.read_text().splitlines())
    led = lg.Ledger(tmp_path / "l")
    r2 = engine.Tuner(_space(), "hyperband", SyntheticRunner(calls_log=calls), led, tmp_path / "w", seed=5,
                      log=lambda m: None).run()
    assert len(calls.read_text().splitlines()) == n
    assert {k: v for k, v in r1.items() if k != "time"} == {k: v for k, v in r2.items() if k != "time"}
    assert sum(1 for r in led.records if r["type"] == "result") == 1


def test_kill_and_resume(tmp_path):
    """A tune killed with SIGKILL mid-run resumes from its ledger: no finished rung read or measurement is
    repeated, and the resumed result equals an uninterrupted run's."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SMALL))
    ledger = tmp_path / "tune.jsonl"
    cmd = [sys.executable, "-m", "specdec_profiler.cli", "tune", "--space", str(space), "--strategy", "hyperband",
           "--ledger", str(ledger), "--runner", "synthetic", "--seed", "11"]
    proc = subprocess.Popen(cmd + ["--synthetic-delay", "0.01"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if ledger.exists() and len(ledger.read_text().splitlines()) >= 12:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    before = [json.loads(x) for x in ledger.read_text().splitlines() if x.endswith("}")]
    assert 12 <= len(before) and not any(r["type"] == "result" for r in before), "killed too late to test resume"
    done = {(r["trial"], r["samples"]) for r in before if r["type"] == "rung"}

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    recs = [json.loads(x) for x in ledger.read_text().splitlines()]
    reads = Counter((r["trial"], r["samples"]) for r in recs if r["type"] == "rung")
    assert max(reads.values()) == 1, "a rung read was repeated"
    assert sum(1 for r in recs if r["type"] == "result") == 1
    # the runner was not asked again for work the ledger already held
    calls = [json.loads(x) for x in (tmp_path / "tune.jsonl.trials" / "calls.jsonl").read_text().splitlines()]
    after_kill = calls[len([c for c in calls]) - (len(reads) - len(done)):]
    assert all((Path(c["workdir"]).name, c["until"]) not in done for c in after_kill)
    # complete: every planned hyperband read is there, and the result equals an uninterrupted run's
    assert len([k for k in reads if k[0].startswith("hb-")]) == sum(
        r.n_configs for b in hb.plan(9000, 1000, 3) for r in b.rungs)
    ref = tmp_path / "ref.jsonl"
    subprocess.run([*cmd[:-6], "--ledger", str(ref), "--runner", "synthetic", "--seed", "11"], check=True,
                   capture_output=True, timeout=60)
    res = json.loads((tmp_path / "tune.jsonl.result.json").read_text())
    want = json.loads((tmp_path / "ref.jsonl.result.json").read_text())
    assert res == want


# ------------------------------------------------------------------------------------------ dry run, tpe
def test_dry_run_spends_nothing(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("dry run must not train or measure")

    monkeypatch.setattr(SyntheticRunner, "train", boom)
    monkeypatch.setattr(SyntheticRunner, "measure", boom)
    p = tmp_path / "space.json"
    p.write_text(json.dumps(SMALL))
    ledger = tmp_path / "l.jsonl"
    for strategy in engine.STRATEGIES:
        assert main(["tune", "--space", str(p), "--strategy", strategy, "--dry-run", "--ledger", str(ledger),
                     "--runner", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert not ledger.exists() and list(tmp_path.iterdir()) == [p]
    assert "bracket s=2: 9 x 1000  3 x 3000  1 x 9000" in out
    assert "x 4 GPU(s) x" in out and "baseline" in out


def test_seed_from_sets_the_baseline(tmp_path, capsys):
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"champion": {"config": {"global_batch": 32, "learning_rate": 3e-4}}}))
    p = tmp_path / "space.json"
    p.write_text(json.dumps(SMALL))
    assert main(["tune", "--space", str(p), "--strategy", "grid", "--dry-run", "--seed-from", str(prior)]) == 0
    baseline = capsys.readouterr().out.split("baseline (always")[1]
    assert "global_batch=32, learning_rate=0.0003, warmup_ratio=0.015 -> 2 per device x 4 GPU(s) x 4 accumulation" \
        in baseline
    prior.write_text(json.dumps({"config": {"batch": 4}}))
    assert main(["tune", "--space", str(p), "--dry-run", "--seed-from", str(prior)]) == 2
    assert "batch: unknown key" in capsys.readouterr().err


def test_tpe_with_optuna(tmp_path):
    pytest.importorskip("optuna")
    led = lg.Ledger(tmp_path / "l")
    r = engine.Tuner(_space(), "tpe", SyntheticRunner(), led, tmp_path / "w", seed=0, n_trials=5,
                     log=lambda m: None).run()
    led.close()
    assert r["strategy"] == "tpe" and r["promoted"]
    n = sum(1 for x in led.records if x["type"] == "rung")
    r2 = engine.Tuner(_space(), "tpe", SyntheticRunner(), lg.Ledger(tmp_path / "l"), tmp_path / "w", seed=0,
                      n_trials=5, log=lambda m: None).run()
    assert r2["champion"] == r["champion"]
    assert sum(1 for x in lg.Ledger(tmp_path / "l").records if x["type"] == "rung") == n


def test_tpe_without_optuna_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(UsageError, match="needs optuna"):
        engine.Tuner(_space(), "tpe", SyntheticRunner(), lg.Ledger(tmp_path / "l"), tmp_path,
                     log=lambda m: None).run()


def test_local_runner_needs_target_and_corpus(tmp_path, capsys):
    p = tmp_path / "space.json"
    p.write_text(json.dumps(SMALL))
    assert main(["tune", "--space", str(p), "--ledger", str(tmp_path / "l"), "--runner", "local-eagle3"]) == 2
    assert "needs --target" in capsys.readouterr().err


def test_random_uses_seeded_rng_only():
    state = random.getstate()
    engine.flat_trials(_space(), "random", 1, sp.baseline_config(_space()), 3)
    assert random.getstate() == state
