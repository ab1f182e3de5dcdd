"""`specdec profile`: accuracy on generated logs, the log shapes, the classifier, recommendations, privacy,
bounded state and bad input. No test asserts on wall-clock speed (benchmarks/profile_throughput.py does)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random

import numpy as np
import pytest

from specdec_profiler import synth_traffic as st
from specdec_profiler import traffic as tr
from specdec_profiler import workload_profile as wp
from specdec_profiler.cli import main
from specdec_profiler.content_class import ALL_CLASSES, classify, normalize_label
from specdec_profiler.sketch import QuantileSketch

MIX = {"chat": 0.30, "code": 0.15, "rewrite": 0.12, "structured": 0.12, "math": 0.11, "reasoning": 0.14,
       "long_context": 0.06}


def _write(path, objs):
    with open(path, "w") as f:
        for o in objs:
            f.write((o if isinstance(o, str) else json.dumps(o)) + "\n")
    return path


def _cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def mixed_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("wp") / "mixed.jsonl"
    truth = st.generate(path, 6000, MIX, seed=11, shapes=st.SHAPES)
    return path, truth


# ---------------------------------------------------------------------------- accuracy
def test_percentiles_within_1pct_of_exact_and_mix_within_2_points(mixed_log):
    path, truth = mixed_log
    prof = wp.profile_log(path, progress=False)
    assert prof.requests == len(truth.classes) == prof.provenance.lines_total
    for dist, values in ((prof.input_tokens, np.array(truth.isl)), (prof.output_tokens, np.array(truth.osl))):
        assert dist.count == len(values) and dist.min == values.min() and dist.max == values.max()
        assert dist.mean == pytest.approx(values.mean(), rel=1e-6)
        for q, got in ((0.5, dist.p50), (0.9, dist.p90), (0.99, dist.p99)):
            for method in ("lower", "linear"):
                exact = float(np.quantile(values, q, method=method))
                assert abs(got - exact) <= 0.01 * exact, (q, method, got, exact)
        assert sum(b.count for b in dist.histogram) == len(values)
        assert dist.quantile_relative_error <= 0.005
    truth_mix = truth.mix()
    for c in MIX:
        assert abs(prof.content_class_mix[c] - truth_mix[c]) <= 0.02, (c, prof.content_class_mix, truth_mix)
    assert sum(prof.content_class_mix.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(b.share for b in prof.isl_buckets) == pytest.approx(1.0, abs=1e-5)
    assert sum(b.count for b in prof.osl_buckets) == prof.requests
    assert prof.bench_shapes and sum(s.weight for s in prof.bench_shapes) == pytest.approx(1.0, abs=1e-4)
    assert prof.bench_shapes_coverage >= 0.9 or len(prof.bench_shapes) == wp.MAX_BENCH_SHAPES
    for s in prof.bench_shapes:
        lo, hi = s.isl_range
        assert lo <= s.isl and (hi is None or s.isl < hi)
    assert prof.provenance.shapes == {s: 1200 for s in st.SHAPES}
    tc = prof.provenance.token_counting
    assert tc.method == "approx-4-chars-per-token" and tc.approximate and tc.chars_per_token == 4
    assert tc.prompt_counts_from["log"] == 2400  # openai usage + pre-counted lines state their counts


def test_result_does_not_depend_on_workers_or_compression(mixed_log, tmp_path, monkeypatch):
    path, _ = mixed_log
    gz = tmp_path / "mixed.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    monkeypatch.setattr(tr, "CHUNK_BYTES", 1 << 20)  # many chunks
    a = wp.profile_log(path, progress=False, jobs=1, keep_samples=2)
    b = wp.profile_log(gz, progress=False, jobs=2, keep_samples=2)   # chunks sent to the workers
    c = wp.profile_log(path, progress=False, jobs=2, keep_samples=2)  # workers read their byte ranges
    assert b.provenance.gzipped and not a.provenance.gzipped and b.provenance.jobs == c.provenance.jobs == 2
    assert a.provenance.source_sha256 != b.provenance.source_sha256 == hashlib.sha256(
        gz.read_bytes()).hexdigest()
    assert a.model_dump(exclude={"provenance"}) == b.model_dump(exclude={"provenance"})
    assert a.model_dump(exclude={"provenance"}) == c.model_dump(exclude={"provenance"})
    assert a.provenance.skipped_by_reason == c.provenance.skipped_by_reason and a.provenance.lines_total == 6000


def test_sketch_guarantee_and_exact_merge():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.lognormal(6, 2, 50_000).astype(int), rng.integers(0, 1500, 20_000), [0, 2 ** 31]])
    whole, a, b = QuantileSketch(), QuantileSketch(), QuantileSketch()
    for i, v in enumerate(x.tolist()):
        whole.add(v)
        (a if i % 3 else b).add(v)
    a.merge(b)
    for q in np.linspace(0, 1, 101):
        exact = float(np.quantile(x, q, method="lower"))
        assert abs(whole.quantile(q) - exact) <= whole.relative_error * exact
        assert a.quantile(q) == whole.quantile(q)
        if exact <= 1024:
            assert whole.quantile(q) == exact
    assert whole.mean == pytest.approx(x.mean()) and whole.max == 2 ** 31 and whole.min == 0


def test_state_is_bounded_whatever_the_number_of_lines():
    def sizes(n):
        b = wp.ProfileBuilder(keep_samples=3, rng=random.Random(0))
        for i in range(n):
            rec = tr.scan(tr.Record("messages", messages=[{"role": "user", "content": f"question {i} " * 5}],
                                    completion=f"answer {i} " * 8, lineno=i + 1))
            b.add(rec, 10 + i % 5000, 20 + i % 7000, i % len(ALL_CLASSES))
        lists = [len(b.cells), len(b.cell_in), len(b.cell_out)]
        lists += [len(s.exact) + len(s.log_counts) + len(s.log_sums) for s in b.in_sk + b.out_sk]
        reservoirs = [len(r.heap) for r in b.overlap_res + b.sample_res]
        return lists, reservoirs

    small, big = sizes(500), sizes(30_000)
    assert small[0] == big[0]
    assert max(big[1]) <= wp.OVERLAP_PER_CLASS


# ---------------------------------------------------------------------------- recommendations
@pytest.mark.parametrize("mix, overlap, expected", [
    ({"rewrite": 0.6, "chat": 0.4}, 0.0, {"predicted_outputs"}),
    ({"chat": 0.8, "math": 0.1, "structured": 0.1}, 0.0, {"eagle3"}),
    ({"code": 0.9, "chat": 0.1}, 0.9, {"ngram", "suffix"}),
])
def test_recommendation(tmp_path, mix, overlap, expected):
    path = tmp_path / "log.jsonl"
    st.generate(path, 600, mix, seed=5, code_overlap=overlap)
    rec = wp.profile_log(path, progress=False).recommended_spec_decode
    assert rec.method in expected, rec
    assert rec.rationale and rec.alternatives and all(a.method != rec.method for a in rec.alternatives)
    if "ngram" in expected:
        assert rec.evidence["code_prompt_overlap"] >= wp.HIGH_PROMPT_OVERLAP
        assert rec.speculative_config["base"] == rec.method


def test_mtp_when_the_model_has_a_head(tmp_path):
    path = tmp_path / "chat.jsonl"
    st.generate(path, 300, {"chat": 1.0}, seed=1)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"], "num_nextn_predict_layers": 1}))
    prof = wp.profile_log(path, progress=False, model_config=str(tmp_path))
    assert prof.recommended_spec_decode.method == "mtp" and prof.provenance.model_has_mtp is True
    cfg.write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert wp.profile_log(path, progress=False, model_config=str(cfg)).recommended_spec_decode.method == "eagle3"


# ---------------------------------------------------------------------------- the classifier
@pytest.mark.parametrize("user, completion, kw, expected", [
    ("What should I see in Lisbon?", "The old town, the river front and the castle.", {}, "chat"),
    ("How do I fix my bike's flat tyre?", "Remove the wheel, find the hole, patch it.", {}, "chat"),
    ("Translate to Polish: good morning", "Dzien dobry", {}, "chat"),
    ("Write a function that merges two sorted lists.", "```python\ndef merge(a, b):\n    return sorted(a + b)\n```",
     {}, "code"),
    ("#include <stdio.h>\nint main(void) {\n  printf(\"hi\");\n  return 0;\n}\nWhy does this not compile?",
     "It compiles; you may be missing a newline.", {}, "code"),
    ("Rewrite the following paragraph so that it sounds more formal: " + "we kinda think the plan is ok " * 8,
     "We believe the plan is acceptable.", {}, "rewrite"),
    ("Refactor this:\n```python\ndef f(x): return x+1\n```", "```python\ndef f(x):\n    return x + 1\n```", {},
     "rewrite"),
    ("Fix the grammar: " + "me and him goes to the store yesterday " * 6, "He and I went to the store.", {},
     "rewrite"),
    ("Any question at all", "Any answer", {"prediction": True}, "rewrite"),
    ("Solve for x: 3x + 5 = 20.", "Subtract 5, divide by 3: x = 5.", {}, "math"),
    ("Compute $$\\int_0^1 x^2 dx$$", "1/3", {}, "math"),
    ("How many ways can 5 people sit in a row?", "5! = 120.", {}, "math"),
    ("List three fruits and return them as JSON.", '{"fruits": ["apple", "pear", "plum"]}', {}, "structured"),
    ("Give me the capital of France.", '{"capital": "Paris"}', {}, "structured"),
    ("What is the weather in Paris?", "", {"tool_calls": True}, "structured"),
    ("Anything", "Sure", {"json_mode": True}, "structured"),
    ("Which plan is better?", "The second.", {"reasoning": True}, "reasoning"),
    ("Which plan is better?", "<think>Let me weigh them.</think>The second.", {}, "reasoning"),
    ("Summarize the document below.\n\n" + "the river and the mountain " * 40, "A river and a mountain.",
     {"prompt_tokens": 9000}, "long_context"),
    ("Summarize the document below.", "Short.", {"prompt_tokens": 9000, "reasoning": True}, "reasoning"),
])
def test_classifier_rules(user, completion, kw, expected):
    kw = dict(kw)
    pt = kw.pop("prompt_tokens", 50)
    assert classify(user=user, completion=completion, prompt_tokens=pt, **kw) == expected


def test_prelabelled_classes_win_and_unknown_labels_are_reported(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Solve for x: 2x = 4"}], "completion": "x = 2",
             "content_class": "Code-Edit"},
            {"prompt_tokens": 10, "completion_tokens": 5, "content_class": "json"},
            {"prompt_tokens": 10, "completion_tokens": 5, "content_class": "long-context"},
            {"prompt_tokens": 10, "completion_tokens": 5, "content_class": "legal"}]
    prof = wp.profile_log(_write(tmp_path / "l.jsonl", rows), progress=False)
    assert prof.content_class_counts["rewrite"] == 1 and prof.content_class_counts["structured"] == 1
    assert prof.content_class_counts["long_context"] == 1 and prof.content_class_counts["other"] == 1
    assert prof.provenance.unknown_class_labels == {"legal": 1}
    assert normalize_label("Tool Use") == "structured" and normalize_label("whatever") == "other"
    assert prof.per_class["rewrite"].prelabelled == 1


# ---------------------------------------------------------------------------- the log shapes
VLLM_REQ = "Request %s details: prompt: %r, prompt_token_ids: %s, prompt_embeds shape: %s."  # vllm 0.32 formats
VLLM_RECV = "Received request %s: params: %s, lora_request: %s."
VLLM_OUT_IDS = "Generated response %s%s details: output_token_ids: %s"
VLLM_OUT = "Generated response %s%s: output: %r, finish_reason: %s"
PREFIX = "(APIServer pid=1) INFO 11-22 14:00:00 [request_logger.py:60] "


def _vllm_log():
    return [PREFIX + VLLM_REQ % ("chatcmpl-1", "<|user|>\nhi there<|end|>\n<|assistant|>\n", [1, 2, 3, 4, 5], None),
            PREFIX + VLLM_RECV % ("chatcmpl-1", "SamplingParams(n=1, max_tokens=16)", None),
            PREFIX + "Avg prompt throughput: 1.0 tokens/s",
            PREFIX + VLLM_OUT % ("chatcmpl-2", " (streaming delta)", "Hel", None),
            PREFIX + VLLM_OUT_IDS % ("chatcmpl-1", "", [7, 8, 9]),
            PREFIX + VLLM_OUT % ("chatcmpl-1", "", "Hello! How's it going?", "stop"),
            PREFIX + VLLM_OUT % ("chatcmpl-9", "", "orphan", "stop"),
            PREFIX + VLLM_REQ % ("chatcmpl-3", "never answered", [1], None)]


def test_vllm_request_logs_are_joined_by_request_id(tmp_path):
    recs = list(tr.TrafficReader(_write(tmp_path / "vllm.log", _vllm_log())))
    assert len(recs) == 1
    r = recs[0]
    assert (r.shape, r.prompt_tokens, r.completion_tokens, r.completion) == ("vllm", 5, 3, "Hello! How's it going?")
    prof = wp.profile_log(tmp_path / "vllm.log", progress=False)
    sk = prof.provenance.skipped_by_reason
    assert sk["vllm_streaming_delta"] == 1 and sk["vllm_response_without_prompt"] == 1
    assert sk["vllm_request_without_response"] == 1 and sk["log_line_ignored"] == 2  # "Received", throughput
    assert prof.provenance.token_counting.method == "log-counts"
    # the same messages inside JSON log lines (a JSON logging config)
    js = [json.dumps({"level": "INFO", "message": line[len(PREFIX):]}) for line in _vllm_log()]
    assert len(list(tr.TrafficReader(_write(tmp_path / "vllm.jsonl", js)))) == 1


def test_openai_pairs_count_tools_multipart_and_reasoning(tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    line = {"request": {"model": "m", "tools": tools, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "18C, sunny"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "It is sunny.",
                                              "reasoning_content": "The tool said sunny.",
                                              "tool_calls": [{"function": {"name": "log", "arguments": "{}"}}]}}]}}
    rec = next(iter(tr.TrafficReader(_write(tmp_path / "o.jsonl", [line]))))
    tools_json = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    expected_prompt = (len(tools_json) + len("Be brief.") + len("Weather in\nParis?")
                       + len('get_weather({"city":"Paris"})') + len("18C, sunny"))
    assert rec.prompt_chars == expected_prompt and rec.non_text_parts == 1
    assert rec.completion_chars == len("It is sunny.") + len("The tool said sunny.") + len("log({})")
    prof = wp.profile_log(tmp_path / "o.jsonl", progress=False)
    assert prof.input_tokens.max == (expected_prompt + 3) // 4 and prof.content_class_counts["reasoning"] == 1
    assert prof.provenance.non_text_parts == 1


def test_other_shapes(tmp_path):
    sglang_json = {"timestamp": "2025-01-01T00:00:00", "event": "request.finished", "rid": "a",
                   "obj": {"text": "<|user|>\nhello<|end|>\n", "sampling_params": {}},
                   "out": {"text": "Hi!",
                           "meta_info": {"prompt_tokens": 7, "completion_tokens": 2, "e2e_latency": 0.1}}}
    sglang_text = ("[2025-01-01 00:00:00] Finish: obj=GenerateReqInput(text='hello there', rid='b'), "
                   "out={'text': 'General Kenobi', 'meta_info': {'id': 'b', 'prompt_tokens': 11, "
                   "'completion_tokens': 4, 'e2e_latency': 0.2}}")
    rows = [sglang_json, {"event": "request.received", "rid": "a", "obj": {}}, sglang_text,
            {"custom_id": "r1", "response": {"status_code": 200, "body": {
                "choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}}},
            {"custom_id": "r2", "response": {"status_code": 500, "body": {}}, "error": {"message": "x"}},
            {"id": "s", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"input_tokens": 40, "output_tokens": 9},
            {"prompt": "Once upon a time", "completion": " there was a river."}]
    prof = wp.profile_log(_write(tmp_path / "s.jsonl", rows), progress=False)
    assert prof.provenance.shapes == {"conversations": 1, "openai": 1, "precounted": 1, "prompt": 1, "sglang": 2}
    assert prof.provenance.skipped_by_reason == {"error_response": 1, "sglang_request_received": 1}
    assert prof.input_tokens.max == 40 and prof.requests == 6


# ---------------------------------------------------------------------------- malformed lines, strictness, windows
def test_malformed_lines_are_counted_by_reason_never_fatal_unless_strict(tmp_path, capsys):
    good = {"messages": [{"role": "user", "content": "hi"}], "completion": "hello"}
    lines = [good, "{not json", "[1, 2]", {"foo": 1}, {"prompt_tokens": -3, "completion_tokens": 1},
             {"messages": "hi", "completion": "x"}, "", {"messages": [{"role": "user", "content": "a"}],
                                                         "completion": 5}, good]
    path = _write(tmp_path / "bad.jsonl", lines)
    prof = wp.profile_log(path, progress=False)
    assert prof.requests == 2 and prof.provenance.lines_total == 9
    assert prof.provenance.skipped_by_reason == {"bad_completion": 1, "bad_messages": 1, "bad_token_count": 1,
                                                 "blank_line": 1, "invalid_json": 1, "not_an_object": 1,
                                                 "unknown_shape": 1}
    assert prof.provenance.skipped_examples["invalid_json"] == [2]
    rc, out, err = _cli(["profile", "--in", str(path), "--out", str(tmp_path / "p.json"), "--strict"], capsys)
    assert rc == 2 and err.startswith("specdec: error: ") and f"{path}:2: invalid_json" in err
    assert len(err.strip().splitlines()) == 1


def test_window_filters_by_timestamp(tmp_path):
    path = tmp_path / "t.jsonl"
    t0 = 1_700_000_000
    st.generate(path, 100, {"chat": 1.0}, seed=2, start_ts=t0)
    with open(path, "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "no time"}], "completion": "x"}) + "\n")
    prof = wp.profile_log(path, progress=False, window=f"{t0 + 10},{t0 + 30}")
    assert prof.requests == 20
    assert prof.provenance.skipped_by_reason == {"outside_window": 80, "no_timestamp": 1}
    iso = wp.profile_log(path, progress=False, window="2023-11-14T22:13:30Z,")  # t0 + 10 onwards
    assert iso.requests == 90 and iso.provenance.window.end is None


@pytest.mark.parametrize("window", ["2024-01-01", "a,b", "2024-02-01,2024-01-01", ",,"])
def test_bad_window(tmp_path, capsys, window, mixed_log):
    rc, _, err = _cli(["profile", "--in", str(mixed_log[0]), "--out", str(tmp_path / "p.json"), "--window", window],
                      capsys)
    assert rc == 2 and "--window" in err and len(err.strip().splitlines()) == 1


def test_bad_input_is_one_line_naming_the_file_or_flag(tmp_path, capsys):
    out = str(tmp_path / "p.json")
    corrupt = tmp_path / "c.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 50)
    empty = _write(tmp_path / "e.jsonl", [""])
    cases = [(["--in", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
             (["--in", str(corrupt)], "unreadable"),
             (["--in", str(empty)], "no usable request"),
             ([], "--in is required"),
             (["--aa-shapes", "--in", str(empty)], "drop --in"),
             (["--in", str(empty), "--keep-samples", "-1"], "--keep-samples"),
             (["--in", str(empty), "--model-config", str(tmp_path / "nope")], "--model-config"),
             (["--in", str(empty), "--tokenizer", str(tmp_path)], "--tokenizer")]
    for argv, needle in cases:
        rc, _, err = _cli(["profile", "--out", out, *argv], capsys)
        assert rc == 2 and needle in err and err.startswith("specdec: error: "), (argv, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


# ---------------------------------------------------------------------------- privacy
def test_no_prompt_text_in_the_profile_unless_kept_and_then_redacted(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Help ZQXMARK{i}: mail me at user{i}@example.com, "
                                                      f"key sk-abcdefghijklmnopqrst{i:04d}"}],
             "completion": f"Sure ZQYMARK{i}, call 555-123-{i:04d}."} for i in range(40)]
    path = _write(tmp_path / "pii.jsonl", rows)
    text = wp.profile_log(path, progress=False).model_dump_json()
    assert "ZQXMARK" not in text and "ZQYMARK" not in text and "example.com" not in text and "sk-" not in text
    prof = wp.profile_log(path, progress=False, keep_samples=3)
    samples = [s for v in prof.samples.values() for s in v]
    assert len(samples) == 3 and all(s.redacted for s in samples)
    text = prof.model_dump_json()
    assert "ZQXMARK" in text  # kept, as asked
    assert "example.com" not in text and "sk-abc" not in text and "555-123" not in text
    assert "<EMAIL>" in text and "<API_KEY>" in text and "<PHONE>" in text


def test_write_redacted_feeds_back_into_profile(tmp_path):
    path = tmp_path / "log.jsonl"
    st.generate(path, 400, {"chat": 0.5, "code": 0.3, "reasoning": 0.2}, seed=4, shapes=("messages", "openai"))
    with open(path, "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "reach me at a.b@corp.example.org"}],
                            "completion": "ok"}) + "\n")
    red = tmp_path / "red.jsonl"
    first = wp.profile_log(path, progress=False, write_redacted=str(red))
    text = red.read_text()
    assert len(text.splitlines()) == first.requests == 401 and "corp.example.org" not in text and "<EMAIL>" in text
    again = wp.profile_log(red, progress=False)
    assert again.content_class_counts == first.content_class_counts
    assert again.input_tokens.mean == first.input_tokens.mean


# ---------------------------------------------------------------------------- tokenizer, AA shapes, schema
def test_exact_counts_with_the_tiny_models_tokenizer(tmp_path, tiny_models):
    from transformers import AutoTokenizer

    target = tiny_models[0]
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Question {i}: " + "why is the sky blue? " * (i % 7 + 1)}],
             "completion": "Because of Rayleigh scattering. " * (i % 5 + 1)} for i in range(40)]
    path = _write(tmp_path / "t.jsonl", rows)
    prof = wp.profile_log(path, progress=False, tokenizer=str(target))
    hf = AutoTokenizer.from_pretrained(target)
    isl = [len(hf.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=True, return_dict=False))
           for r in rows]
    osl = [len(hf(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert prof.input_tokens.mean == pytest.approx(np.mean(isl)) and prof.input_tokens.max == max(isl)
    assert prof.input_tokens.p50 == float(np.quantile(isl, 0.5, method="lower"))
    assert prof.output_tokens.mean == pytest.approx(np.mean(osl))
    tc = prof.provenance.token_counting
    assert tc.method == "hf-tokenizer" and not tc.approximate and tc.chat_template_applied
    assert len(tc.tokenizer_sha256) == 64


def test_aa_shapes_profile(tmp_path, capsys):
    out = tmp_path / "aa.json"
    rc, stdout, _ = _cli(["profile", "--aa-shapes", "--out", str(out)], capsys)
    assert rc == 0 and stdout.strip().splitlines()[-1] == str(out)
    prof = wp.WorkloadProfile.model_validate_json(out.read_text())
    assert sorted((s.isl, s.osl) for s in prof.bench_shapes) == [(1000, 1000), (10000, 1500), (100000, 2000)]
    assert all(s.weight == pytest.approx(1 / 3, abs=1e-5) for s in prof.bench_shapes)
    assert prof.input_tokens.p50 == 10000 and prof.provenance.source == "aa-shapes"
    assert prof.provenance.token_counting.method == "aa-shape-definition"


def test_committed_schema_equals_the_export():
    assert wp.SCHEMA_PATH.read_text() == wp.export_schema()


def test_cli_writes_the_profile_and_prints_a_summary(mixed_log, tmp_path, capsys):
    out = tmp_path / "sub" / "workload-profile.json"
    rc, stdout, _ = _cli(["profile", "--in", str(mixed_log[0]), "--out", str(out), "--no-progress"], capsys)
    assert rc == 0 and stdout.strip().splitlines()[-1] == str(out)
    assert "recommended:" in stdout and "class mix:" in stdout
    prof = wp.WorkloadProfile.model_validate_json(out.read_text())
    assert prof.schema_version == wp.SCHEMA_VERSION and prof.samples is None
