"""benchmarks/vllm_e2e.py's summary: the paired ratio and its interval (pure arithmetic on result rows)."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _e2e():
    spec = importlib.util.spec_from_file_location("vllm_e2e", ROOT / "benchmarks" / "vllm_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(base, ts, arm="eagle3_k3"):
    rows = []
    for t, (b, x) in enumerate(zip(base, ts)):
        rows.append({"arm": arm, "pair": arm, "trial": t, "output_tokens_per_s": b})
        rows.append({"arm": "tilespec", "pair": arm, "trial": t, "output_tokens_per_s": x})
    return rows


def test_paired_ratio_is_the_geometric_mean_of_pairs_with_a_t_interval():
    E = _e2e()
    # the host's speed moves both trials of a pair together: the pairs agree although the trials do not
    base = [400.0, 900.0, 600.0, 1000.0]
    ts = [b * r for b, r in zip(base, (0.95, 0.97, 0.96, 0.98))]
    pr = E.paired_ratio(_rows(base, ts), "eagle3_k3")
    assert pr["pairs"] == 4
    assert pr["ratio"] == pytest.approx(math.exp(sum(math.log(r) for r in (0.95, 0.97, 0.96, 0.98)) / 4), abs=1e-4)
    assert pr["low"] < pr["ratio"] < pr["high"] < 0.99  # a consistent 3-5% loss is resolved despite the spread


def test_several_server_pairs_keep_their_trials_apart_and_widen_the_interval(tmp_path):
    """--pairs N: trial i of one server pair is never matched with trial i of another; the servers' own ratios
    are reported, and with 3 or more the interval over them takes in what a server's start does (here each
    pair is tight, 0.96 / 1.01 / 1.06, so the interval over trials is narrow and the one over servers is not);
    each server pair's trials land in their own folder for `specdec decide`."""
    from specdec_profiler.decide import write_e2e_trials

    E = _e2e()
    rows = []
    for sp, r in enumerate((0.96, 1.01, 1.06)):
        for t, b in enumerate((900.0, 950.0, 1000.0, 920.0)):
            rows.append({"arm": "eagle3_k3", "pair": "eagle3_k3", "server_pair": sp, "trial": t,
                         "output_tokens_per_s": b + sp})
            rows.append({"arm": "tilespec", "pair": "eagle3_k3", "server_pair": sp, "trial": t,
                         "output_tokens_per_s": (b + sp) * r * (1.002 if t % 2 else 0.998)})
    pr = E.paired_ratio(rows, "eagle3_k3")
    assert pr["pairs"] == 12 and pr["server_pairs"] == 3
    assert pr["server_pair_ratios"] == pytest.approx([0.96, 1.01, 1.06], abs=1e-3)
    assert pr["ratio"] == pytest.approx((0.96 * 1.01 * 1.06) ** (1 / 3), abs=1e-3)
    assert pr["servers"]["low"] < pr["low"] < pr["high"] < pr["servers"]["high"]
    assert "servers" not in E.paired_ratio([r for r in rows if r["server_pair"] < 2], "eagle3_k3")
    assert E.parse_args(["--pairs", "3"]).pairs == 3 and E.parse_args([]).pairs == 1
    assert E.main(["--pairs", "0", "--out", str(tmp_path / "x")]) == 2
    ctx = {"osl": 48, "workloads": {"code_edit": {"temperature": 0.0}}, "arms": {}}
    for r in rows:
        r.update(workload="code_edit", concurrency=16, requests=192, tpot_ms_p50=14.0)
    paths = write_e2e_trials(tmp_path / "trials", rows, ctx)
    assert len(set(paths)) == len(rows)
    assert tmp_path / "trials/code_edit_c16/pair-eagle3_k3-3/tilespec/summary-trial0.json" in paths


def test_paired_ratio_needs_two_pairs_and_ignores_unpaired_trials():
    E = _e2e()
    rows = _rows([500.0], [450.0]) + [{"arm": "tilespec", "pair": "no_spec", "trial": 0, "output_tokens_per_s": 1.0}]
    assert E.paired_ratio(rows, "eagle3_k3") is None
    rows = _rows([500.0, 520.0], [500.0, 520.0])
    assert E.paired_ratio(rows, "eagle3_k3")["ratio"] == pytest.approx(1.0)


def test_replot_redraws_the_png_of_a_saved_run(tmp_path):
    import json

    E = _e2e()
    rows = []
    for wl, c in (("code_edit", 1), ("code_edit", 4)):
        for r in _rows([400.0, 500.0, 450.0], [380.0, 510.0, 440.0]) + _rows([300.0, 350.0], [330.0, 360.0], "no_spec"):
            rows.append({**r, "workload": wl, "concurrency": c, "tpot_ms_p50": 5.0, "acceptance_length": 2.0})
    arms = ["no_spec", "eagle3_k3", "tilespec"]
    summary = E.summarize_rows(rows, arms)
    context = {"engine_version": "0.32.0", "hardware": "test host", "model_name": "m", "model_params_m": 3.1,
               "osl": 48, "trials": 3, "drafter": "eagle3", "arms": {a: None for a in arms}}
    saved = tmp_path / "vllm_e2e.json"
    saved.write_text(json.dumps({"context": context, "summary": summary, "results": rows}))
    png = E.replot(saved)
    assert png == tmp_path / "vllm_e2e.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_control_run_puts_a_server_without_speculation_in_the_tilespec_slot(tmp_path):
    """--control (A/A): the same paired design, with the 'tilespec' slot running no speculation, so its
    ratios measure the harness itself; the other arms are unchanged."""
    E = _e2e()
    normal = E.run_configs(tmp_path, "ngram")
    control = E.run_configs(tmp_path, "ngram", control=True)
    assert normal["tilespec"]["method"] == "tilespec"
    assert control["tilespec"] is None
    assert {k: v for k, v in control.items() if k != "tilespec"} == {k: v for k, v in normal.items() if k != "tilespec"}
    assert E.parse_args(["--control"]).control and not E.parse_args([]).control


def test_tilespec_options_reach_only_the_tilespec_arm_and_bad_ones_name_the_problem(tmp_path):
    """--tilespec-options: extra speculative-config keys for the tilespec servers (e.g. a depth_cost_floor to
    compare), recorded with the arm's config; the baselines are unchanged; a bad value stops the run first."""
    E = _e2e()
    opts = E.parse_tilespec_options('{"depth_cost_floor": 1.0}')
    plain = E.run_configs(tmp_path, "eagle3", "/heads/h")
    cfg = E.run_configs(tmp_path, "eagle3", "/heads/h", tilespec_options=opts)
    assert cfg["tilespec"] == {**plain["tilespec"], "depth_cost_floor": 1.0}
    assert {k: v for k, v in cfg.items() if k != "tilespec"} == {k: v for k, v in plain.items() if k != "tilespec"}
    assert E.parse_tilespec_options(None) == {}
    for text, msg in (("{1:", "not JSON"), ("[1]", "JSON object"), ('{"base": "ngram"}', "'base'")):
        with pytest.raises(ValueError, match=msg):
            E.parse_tilespec_options(text)
    assert E.main(["--tilespec-options", "[1]", "--out", str(tmp_path / "x")]) == 2


def test_model_drafter_arms_for_eagle3_and_eagle(tmp_path):
    """--drafter eagle3 / eagle: no speculation, static K 1/3/5/7, vLLM's dynamic schedule and tilespec over the
    same head; tilespec chooses within the largest static K."""
    E = _e2e()
    for drafter in ("eagle3", "eagle"):
        cfg = E.run_configs(tmp_path, drafter, "/heads/h")
        assert list(cfg) == ["no_spec"] + [f"{drafter}_k{k}" for k in (1, 3, 5, 7)] + ["dynamic", "tilespec"]
        assert cfg[f"{drafter}_k3"] == {"method": drafter, "num_speculative_tokens": 3, "model": "/heads/h"}
        assert cfg["dynamic"]["method"] == drafter and "num_speculative_tokens_per_batch_size" in cfg["dynamic"]
        ts = cfg["tilespec"]
        assert (ts["method"], ts["base"], ts["num_speculative_tokens"], ts["model"]) == ("tilespec", drafter, 7,
                                                                                        "/heads/h")
    assert E.parse_args(["--drafter", "eagle"]).drafter == "eagle"


@pytest.mark.parametrize("flags, isa", [("fpu avx2 fma", "AVX2"), ("avx2 avx512f avx512bw", "AVX-512"),
                                        ("avx2 avx512f avx512_bf16", "AVX-512 BF16"), ("sse4_2", "no AVX2")])
def test_results_name_the_vector_extension_vllm_cpu_runs_on(tmp_path, flags, isa):
    """Two hosts of one model name ('AMD EPYC') ran the same benchmark ~2.5x apart: one had AVX-512, the other
    AVX2 only. Every benchmark's context names which of vLLM's CPU builds the host takes (one helper,
    specdec_engine.host); the model name alone stays the CPU part of the profile cache key."""
    import os

    from specdec_engine.host import cpu_hardware, cpu_isa, cpu_model, cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
    assert cpu_isa(str(info)) == isa and cpu_name(str(info)) == "AMD EPYC"
    assert cpu_model(str(info)) == f"AMD EPYC ({isa})"
    assert cpu_hardware(str(info)) == f"AMD EPYC ({isa}), {os.cpu_count()} cores (CPU only)"
    missing = str(tmp_path / "missing")
    assert cpu_isa(missing) == "?" and cpu_name(missing)  # no /proc/cpuinfo: what `platform` knows
