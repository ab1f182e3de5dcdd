"""`specdec decide`, the A/B gate: GO only on a win in acceptance length AND TPOT beyond the noise."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from specdec_profiler import decide as D
from specdec_profiler.cli import build_parser, main
from specdec_profiler.errors import UsageError
from specdec_profiler.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {"endpoint": "http://gpu-a:8000", "model": "llama-8b", "workload": "aa-1k", "dataset": "synthetic",
            "input_tokens": 1000, "output_tokens": 1000, "output_length": "forced", "concurrency": 4,
            "requests": 20, "temperature": 0.0, "top_p": 1.0, "driver": "builtin"}


def summary(tpot, al, trial=None, drafts=1000, **settings):
    """A trial summary as `specdec aa` writes it (the fields the gate reads, plus some it ignores)."""
    return {"schema": "specdec_trial_summary_v1", "trial": trial, "settings": {**SETTINGS, **settings},
            "context": {"date": "2026-01-01T00:00:00+00:00"},
            "metrics": {"tpot_ms": {"mean": tpot * 1.05, "p50": tpot, "p90": tpot * 1.3, "p99": tpot * 1.5},
                        "ttft_ms": {"p50": 50.0}, "requests": 20, "ok": 20},
            "spec_decode": {"acceptance_length": al, "drafts": drafts, "draft_tokens": drafts * 4,
                            "accepted_tokens": round((al - 1) * drafts), "metrics_available": True},
            "errors": {"count": 0, "by_kind": {}}, "warnings": []}


def arm(root: Path, name: str, tpots, als, layout="folders", **settings) -> Path:
    d = root / name
    for i, (t, a) in enumerate(zip(tpots, als)):
        path = d / f"trial-{i}" / "summary.json" if layout == "folders" else d / f"summary-trial{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary(t, a, trial=i, **settings)))
    return d


def run(capsys, *args):
    rc = main(["decide", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


BASE_TPOT, BASE_AL = [20.1, 20.4, 19.8, 20.2], [2.31, 2.30, 2.33, 2.32]


# ---------------------------------------------------------------------------- the four verdicts the issue names
def test_a_clear_win_is_go(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0, 17.3], [2.61, 2.64, 2.60, 2.63])
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    v = D.Verdict.model_validate_json(out)
    assert rc == 0 and v.verdict == "GO" and v.exit_code == 0
    assert err.startswith("GO: acceptance 2.31 -> 2.62 (+13.2%, 95% CI [+12.0%, +14.4%]); ")
    assert "TPOT 20.12 -> 17.25 ms (-14.3%" in err and "4 vs 4 trials" in err and "includes 0" not in err
    assert v.acceptance_length.passed and v.tpot_ms.passed and v.settings_mismatch == []
    assert v.acceptance_length.relative_interval[0] > 0 and v.tpot_ms.relative_interval[1] < 0
    assert v.baseline.n_usable == 4 and v.baseline.tpot_ms.median == pytest.approx(20.15)
    assert [r.split(":")[0] for r in v.reasons] == ["acceptance length higher beyond the noise",
                                                    "TPOT lower beyond the noise"]


def test_a_tie_is_no_go(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    c = arm(tmp_path, "b", [20.3, 19.9, 20.0, 20.3], [2.32, 2.29, 2.33, 2.31])
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    v = D.Verdict.model_validate_json(out)
    assert rc == 1 and v.verdict == "NO-GO"
    assert err.startswith("NO-GO: acceptance 2.31 -> 2.31 (-0.1%, 95% CI [-1.3%, +1.0%] includes 0); ")
    assert err.count("includes 0") == 2
    assert not v.acceptance_length.beyond_noise and not v.tpot_ms.beyond_noise
    assert len(v.reasons) == 2 and all("includes 0" in r for r in v.reasons)


def test_a_win_on_acceptance_but_a_loss_on_tpot_is_no_go(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    c = arm(tmp_path, "b", [23.0, 23.4, 22.8, 23.1], [2.61, 2.64, 2.60, 2.63])   # longer drafts, dearer steps
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    v = D.Verdict.model_validate_json(out)
    assert rc == 1 and v.verdict == "NO-GO"
    assert v.acceptance_length.passed and not v.tpot_ms.passed and v.tpot_ms.worse and v.tpot_ms.note == "worse"
    assert v.reasons == ["TPOT worse: +14.7%, 95% CI [+12.5%, +16.8%] excludes 0"]
    assert "TPOT 20.12 -> 23.07 ms (+14.7%" in err and "] worse)" in err


def test_two_trials_is_draft(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT[:2], BASE_AL[:2])
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60])
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    v = D.Verdict.model_validate_json(out)
    assert rc == 3 and v.verdict == "DRAFT" and v.exit_code == 3
    assert v.reasons == ["baseline has 2 usable trials (< 3)"]
    assert v.provisional == "GO" and v.tpot_ms is not None          # the numbers are still there
    assert err.startswith("DRAFT: baseline has 2 usable trials (< 3). Provisional GO: acceptance 2.30 -> 2.62 (+13.5%")


def test_one_trial_is_draft_with_means_but_no_interval(tmp_path):
    v = D.decide(arm(tmp_path, "a", [20.0], [2.3]), arm(tmp_path, "b", [17.0, 17.1, 16.9], [2.6, 2.6, 2.7]))
    assert v.verdict == "DRAFT" and v.provisional is None and v.acceptance_length is None
    assert "acceptance 2.30 -> 2.63 (no interval: too few trials)" in v.summary and "1 vs 3 trials" in v.summary


# ---------------------------------------------------------------------------- settings, min gain, usable trials
def test_different_settings_are_draft_and_named(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60], concurrency=8, temperature=0.7)
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    v = D.Verdict.model_validate_json(out)
    assert rc == 3 and v.verdict == "DRAFT" and v.provisional == "GO"
    assert {m.key: (m.baseline, m.candidate) for m in v.settings_mismatch} == {
        "concurrency": ([4], [8]), "temperature": ([0.0], [0.7])}
    assert "settings differ: concurrency (baseline 4, candidate 8), temperature (baseline 0.0, candidate 0.7)" in err


def test_settings_that_differ_inside_one_arm_are_draft(tmp_path):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    (b / "trial-3" / "summary.json").write_text(json.dumps(summary(20.0, 2.3, trial=3, requests=10)))
    v = D.decide(b, arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60]))
    assert v.verdict == "DRAFT" and [(m.key, m.baseline, m.candidate) for m in v.settings_mismatch] == [
        ("requests", [20, 10], [20])]


def test_endpoint_is_not_compared_unless_asked(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT, BASE_AL)
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60], endpoint="http://gpu-b:8000")
    rc, _, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 0 and "warning: settings.endpoint differs" in err and "gpu-b" in err
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c, "--match-endpoint")
    assert rc == 3 and "settings differ: endpoint (baseline http://gpu-a:8000, candidate http://gpu-b:8000)" in err
    c2 = arm(tmp_path, "c", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60], requests=40)
    assert run(capsys, "--baseline", b, "--candidate", c2)[0] == 3
    assert run(capsys, "--baseline", b, "--candidate", c2, "--ignore-setting", "requests")[0] == 0


def test_min_gain_rejects_a_win_too_small_to_matter(tmp_path, capsys):
    b = arm(tmp_path, "a", [20.00, 20.02, 19.98, 20.01], [2.300, 2.301, 2.299, 2.300])
    c = arm(tmp_path, "b", [19.60, 19.62, 19.58, 19.61], [2.346, 2.347, 2.345, 2.346])   # +2% / -2%, tight
    assert run(capsys, "--baseline", b, "--candidate", c)[0] == 0
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c, "--min-gain", "5%")
    v = D.Verdict.model_validate_json(out)
    assert rc == 1 and v.acceptance_length.beyond_noise and not v.acceptance_length.meets_min_gain
    assert "below --min-gain 5.0%" in err and v.method.min_gain == pytest.approx(0.05)
    assert run(capsys, "--baseline", b, "--candidate", c, "--min-gain", "0.01")[0] == 0


def test_parse_gain():
    assert D.parse_gain("1%") == pytest.approx(0.01) and D.parse_gain("0.02") == pytest.approx(0.02)
    for bad in ("1", "abc", "-1%", "150%"):
        with pytest.raises(UsageError, match="--min-gain"):
            D.parse_gain(bad)


def test_a_trial_without_tpot_or_acceptance_is_not_counted(tmp_path):
    b = arm(tmp_path, "a", BASE_TPOT[:3], BASE_AL[:3])
    s = summary(20.0, 2.3, trial=2)
    s["metrics"]["tpot_ms"] = None
    (b / "trial-2" / "summary.json").write_text(json.dumps(s))
    s = summary(20.0, 2.3, trial=1)
    s["spec_decode"] = {"acceptance_length": None, "drafts": 0, "draft_tokens": 0, "accepted_tokens": 0,
                        "metrics_available": False}
    (b / "trial-1" / "summary.json").write_text(json.dumps(s))
    v = D.decide(b, arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60]))
    assert v.verdict == "DRAFT" and v.baseline.n_trials == 3 and v.baseline.n_usable == 1
    assert "trial-2/summary.json: no median TPOT" in v.reasons[0] and "/metrics was not readable" in v.reasons[0]


def test_acceptance_comes_from_the_counters_and_is_one_without_drafts(tmp_path):
    s = summary(20.0, 2.3)
    sd = D.TrialSummary.model_validate(s).spec_decode
    assert D.trial_acceptance_length(sd) == (pytest.approx(2.3), "counters")
    no_spec = D.SpecDecodeWindow(acceptance_length=None, drafts=0, draft_tokens=0, accepted_tokens=0)
    assert D.trial_acceptance_length(no_spec) == (1.0, "no_drafts")
    assert D.trial_acceptance_length(D.SpecDecodeWindow(acceptance_length=2.5)) == (2.5, "field")
    assert D.trial_acceptance_length(D.SpecDecodeWindow(metrics_available=False)) == (None, None)


def test_flat_and_folder_layouts_are_both_read(tmp_path):
    b = arm(tmp_path, "a", BASE_TPOT[:2], BASE_AL[:2], layout="flat")
    (b / "trial-9").mkdir()
    (b / "trial-9" / "summary.json").write_text(json.dumps(summary(20.0, 2.31, trial=9)))
    (b / "notes.json").write_text("{}")                     # not a summary name: ignored
    v = D.decide(b, arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60]))
    assert [Path(t.file).name for t in v.baseline.trials] == ["summary-trial0.json", "summary-trial1.json",
                                                              "summary.json"]
    assert v.verdict == "GO"


def test_programmatic_api_on_summaries_in_memory():
    b = [D.TrialSummary.model_validate(summary(t, a)) for t, a in zip(BASE_TPOT, BASE_AL)]
    c = [summary(t, a) for t, a in zip([17.2, 17.5, 17.0], [2.61, 2.64, 2.60])]       # dicts are validated
    v = D.decide_summaries(b, c, min_trials=3)
    assert isinstance(v, D.Verdict) and v.verdict == "GO" and v.baseline.trials[0].file == "baseline[0]"
    assert D.Verdict.model_validate_json(v.model_dump_json(by_alias=True)) == v


# ---------------------------------------------------------------------------- bad input: exit 2, file and field named
def test_missing_and_empty_directories(tmp_path, capsys):
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60])
    rc, out, err = run(capsys, "--baseline", tmp_path / "nope", "--candidate", c)
    assert rc == 2 and out == "" and err == f"specdec: error: --baseline {tmp_path / 'nope'}: no such directory\n"
    (tmp_path / "empty" / "aa-1k").mkdir(parents=True)
    rc, _, err = run(capsys, "--baseline", tmp_path / "empty", "--candidate", c)
    assert rc == 2 and "no trial summaries" in err and "summary*.json" in err and len(err.splitlines()) == 1
    rc, _, err = run(capsys, "--baseline", c, "--candidate", c)
    assert rc == 2 and "same directory" in err


def test_a_summary_failing_the_schema_names_the_file_and_the_field(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT[:3], BASE_AL[:3])
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60])
    bad = summary(17.0, 2.6, trial=1)
    bad["metrics"]["tpot_ms"]["p50"] = "fast"
    (c / "trial-1" / "summary.json").write_text(json.dumps(bad))
    rc, out, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert f"{c / 'trial-1' / 'summary.json'}: field 'metrics.tpot_ms.p50'" in err and '"fast"' in err
    bad = summary(17.0, 2.6, trial=1)
    del bad["settings"]["concurrency"]
    (c / "trial-1" / "summary.json").write_text(json.dumps(bad))
    assert "field 'settings.concurrency': Field required" in run(capsys, "--baseline", b, "--candidate", c)[2]
    (c / "trial-1" / "summary.json").write_text('{"schema": "specdec_trial_summary_v1", ')
    rc, _, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 2 and "trial-1/summary.json: not valid JSON" in err
    bad = summary(17.0, 2.6, trial=1)
    bad["spec_decode"]["acceptance_length"] = float("nan")
    (c / "trial-1" / "summary.json").write_text(json.dumps(bad))
    assert "field 'spec_decode.acceptance_length'" in run(capsys, "--baseline", b, "--candidate", c)[2]


def test_mixed_or_missing_schema_versions(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT[:3], BASE_AL[:3])
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60])
    v2 = summary(17.0, 2.6, trial=2) | {"schema": "specdec_trial_summary_v2"}
    (c / "trial-2" / "summary.json").write_text(json.dumps(v2))
    rc, _, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 2 and "mixed schema versions" in err and "specdec_trial_summary_v2 (" in err
    assert "trial-2/summary.json" in err.split("specdec_trial_summary_v2")[1]
    for d in (b, c):                              # all v2: one version, but not one this reads
        for p in d.glob("*/summary.json"):
            p.write_text(json.dumps(json.loads(p.read_text()) | {"schema": "specdec_trial_summary_v2"}))
    rc, _, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 2 and "field 'schema': \"specdec_trial_summary_v2\" is not supported" in err
    for d in (b, c):                              # no schema at all (written before it existed)
        for p in d.glob("*/summary.json"):
            data = json.loads(p.read_text())
            del data["schema"]
            p.write_text(json.dumps(data))
    rc, _, err = run(capsys, "--baseline", b, "--candidate", c)
    assert rc == 2 and "field 'schema': missing" in err


def test_bad_flags(tmp_path, capsys):
    b = arm(tmp_path, "a", BASE_TPOT[:3], BASE_AL[:3])
    c = arm(tmp_path, "b", [17.2, 17.5, 17.0], [2.61, 2.64, 2.60])
    assert "--min-trials must be >= 2" in run(capsys, "--baseline", b, "--candidate", c, "--min-trials", "1")[2]
    assert "--confidence" in run(capsys, "--baseline", b, "--candidate", c, "--confidence", "95")[2]


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281),
                                         (30, 2.0423), (1000, 1.9623)])
def test_builtin_t_quantiles_match_the_table(df, expected):
    assert D.t_ppf_builtin(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert D.t_ppf_builtin(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_builtin_t_quantiles_at_fractional_df_and_other_levels():
    assert D.t_ppf_builtin(0.95, 5) == pytest.approx(2.0150, abs=1e-4)
    assert D.t_ppf_builtin(0.995, 3) == pytest.approx(5.8409, abs=1e-4)
    assert D.t_ppf_builtin(0.975, 3) > D.t_ppf_builtin(0.975, 3.5) > D.t_ppf_builtin(0.975, 4)
    assert D.t_cdf(D.t_ppf_builtin(0.975, 3.5), 3.5) == pytest.approx(0.975, abs=1e-10)


def test_welch_interval_by_hand():
    diff, (lo, hi), se, df, t = D.welch_interval([1, 2, 3], [4, 5, 6])
    # variances 1 and 1: se = sqrt(1/3 + 1/3), df = (2/3)^2 / ((1/3)^2/2 * 2) = 4, t(0.975, 4) = 2.7764
    assert diff == 3 and se == pytest.approx((2 / 3) ** 0.5) and df == pytest.approx(4.0)
    assert (lo, hi) == (pytest.approx(3 - 2.7764 * se, abs=1e-3), pytest.approx(3 + 2.7764 * se, abs=1e-3))
    diff, (lo, hi), se, df, _ = D.welch_interval([1.0, 1.0, 1.0], [2.0, 2.5, 3.0])  # one arm without spread
    assert df == pytest.approx(2.0) and se == pytest.approx(0.5 / 3 ** 0.5) and lo > 0
    assert D.welch_interval([1.0, 1.0], [1.0, 1.0])[1] == (0.0, 0.0)


# ---------------------------------------------------------------------------- schemas and writers
def test_committed_schemas_equal_the_export():
    docs = D.schema_documents()
    assert set(docs) == {"trial-summary.schema.json", "decide-verdict.schema.json"}
    for name, doc in docs.items():
        assert json.loads((ROOT / "schemas" / name).read_text()) == doc, \
            f"schemas/{name} is stale: python -m specdec_profiler.decide export-schemas"
    assert docs["trial-summary.schema.json"]["properties"]["schema"]["const"] == "specdec_trial_summary_v1"


def _rows_and_context():
    context = {"model": "/m/tiny-wide", "model_name": "tiny-wide", "osl": 64, "hardware": "cpu",
               "workloads": {"code_edit": {"temperature": 0.0}}, "arms": {"tilespec": {"method": "tilespec"}}}
    rows = []
    for trial in range(3):
        for arm_name, tpot, al, dt in (("no_spec", 27.0 + trial * 0.2, None, 0.0),
                                       ("tilespec", 19.0 + trial * 0.3, 2.7 + trial * 0.02, 300.0)):
            rows.append({"arm": arm_name, "workload": "code_edit", "concurrency": 1, "trial": trial, "requests": 8,
                         "output_tokens_per_s": 40.0, "tpot_ms_p50": tpot, "ttft_ms_p50": 150.0, "e2e_ms_p50": 1900.0,
                         "errors": {"timeout": 1} if trial == 2 else {}, "acceptance_length": al,
                         "draft_tokens": dt, "pair": "no_spec"})
    return rows, context


def test_e2e_rows_become_trial_summaries_that_decide_reads(tmp_path):
    rows, context = _rows_and_context()
    paths = D.write_e2e_trials(tmp_path, rows, context)
    assert len(paths) == 6 and paths[1] == tmp_path / "code_edit_c1/pair-no_spec/tilespec/summary-trial0.json"
    d = tmp_path / "code_edit_c1" / "pair-no_spec"
    v = D.decide(d / "no_spec", d / "tilespec")
    assert v.verdict == "GO" and v.baseline.acceptance_length.values == [1.0, 1.0, 1.0]
    assert v.baseline.trials[0].acceptance_source == "no_drafts" and v.candidate.trials[0].acceptance_source == "field"
    assert v.candidate.tpot_ms.values == [19.0, 19.3, 19.6] and v.settings["temperature"] == 0.0
    assert any("1 failed request" in w for w in v.warnings)
    assert any(w.startswith("baseline: 3 trial(s) saw no spec-decode drafts") for w in v.warnings)


def test_committed_e2e_results_convert(tmp_path):
    results = ROOT / "benchmarks" / "results" / "vllm_e2e" / "vllm_e2e.json"
    if not results.is_file():
        pytest.skip("no committed e2e results")
    data = json.loads(results.read_text())
    D.write_e2e_trials(tmp_path, data["results"], data["context"])
    pair = next(p for p in sorted(tmp_path.glob("*/pair-*")) if (p / "tilespec").is_dir())
    base = next(p for p in pair.iterdir() if p.name != "tilespec")
    v = D.decide(base, pair / "tilespec")
    assert v.baseline.n_trials == data["context"]["trials"] and v.settings_mismatch == []


# ---------------------------------------------------------------------------- `specdec aa --trial N` end to end
class _FakeVLLM(BaseHTTPRequestHandler):
    """Streams 3 tokens per request and counts spec-decode drafts in /metrics: 10 drafts, `accepted` accepted."""

    accepted = 15

    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        text = (f"vllm:spec_decode_num_drafts_total {srv.requests * 10}\n"
                f"vllm:spec_decode_num_draft_tokens_total {srv.requests * 40}\n"
                f"vllm:spec_decode_num_accepted_tokens_total {srv.requests * self.accepted}\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(text.encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"delta": {"content": "hi "}}]}
        usage = {"choices": [], "usage": {"completion_tokens": 3, "prompt_tokens": 5}}
        for ev in (chunk, chunk, chunk, usage):
            self.wfile.write(f"data: {json.dumps(ev)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


def test_specdec_aa_trials_feed_decide(tmp_path, capsys):
    servers = []
    for accepted in (15, 20):                   # acceptance length 2.5 (baseline) and 3.0 (candidate)
        handler = type("H", (_FakeVLLM,), {"accepted": accepted})
        srv = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        srv.requests = 0
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    try:
        for srv, out in zip(servers, ("runs_a", "runs_b")):
            for trial in range(3):
                args = build_parser().parse_args(
                    ["aa", "--endpoint", f"http://127.0.0.1:{srv.server_address[1]}", "--model", "m",
                     "--scale", "0.01", "--requests", "2", "--concurrency", "2", "--timeout-s", "20",
                     "--out", str(tmp_path / out), "--trial", str(trial)])
                assert args.func(args) == 0
    finally:
        for srv in servers:
            srv.shutdown()
    capsys.readouterr()
    assert (tmp_path / "runs_a" / "aa-1k" / "trial-2" / "summary.json").is_file()
    v = D.decide(tmp_path / "runs_a" / "aa-1k", tmp_path / "runs_b" / "aa-1k")
    assert v.verdict != "DRAFT" and v.settings_mismatch == [] and [t.trial for t in v.baseline.trials] == [0, 1, 2]
    assert v.baseline.acceptance_length.values == [2.5] * 3 and v.candidate.acceptance_length.values == [3.0] * 3
    assert v.acceptance_length.passed and v.settings["workload"] == "aa-1k" and v.settings["output_tokens"] == 10
    assert any("settings.endpoint differs" in w for w in v.warnings)
