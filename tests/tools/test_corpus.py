"""`specdec corpus`: direct rows matched to the profile, the chat-template gate, the SpecForge plan, bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from specdec_profiler import corpus as cp
from specdec_profiler import synth_traffic as st
from specdec_profiler import workload_profile as wp
from specdec_profiler.cli import main

SERVED = {"chat": 0.2, "code": 0.4, "math": 0.4}      # what the profile saw
SAMPLE = {"chat": 0.5, "code": 0.25, "math": 0.25}    # the (biased) traffic sample the corpus is built from


def _cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def served_profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    log = d / "served.jsonl"
    st.generate(log, 1500, SERVED, seed=21)
    prof = wp.profile_log(log, progress=False)
    path = d / "workload-profile.json"
    wp.write_profile(prof, path)
    return path, prof


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    d = tmp_path_factory.mktemp("traffic")
    path = d / "traffic.jsonl"
    st.generate(path, 900, SAMPLE, seed=22, shapes=("messages", "openai"))
    lines = path.read_text().splitlines()
    extra = [json.dumps({"messages": [{"role": "user", "content": "Write to me at jane.doe@example.com about "
                                                                  "the harbor festival, please."}],
                         "completion": "Sure, I will write to jane.doe@example.com."})]
    path.write_text("\n".join(lines + lines[:60] + extra) + "\n")  # 60 exact duplicates
    return path


def test_direct_rows_match_the_profile_mix_dedup_redact_and_pass_the_gate(
        served_profile, traffic, tmp_path, tiny_models, capsys):
    prof_path, prof = served_profile
    out = tmp_path / "corpus.jsonl"
    rc, stdout, err = _cli(["corpus", "--profile", str(prof_path), "--out", str(out), "--traffic", str(traffic),
                            "--chat-template", str(tiny_models[0]), "--max-length", "65536"], capsys)
    assert rc == 0, err
    rows = _rows(out)
    report = json.loads((tmp_path / "corpus.report.json").read_text())
    assert report["rows"] == len(rows) > 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({json.dumps(r["conversations"]) for r in rows}) == len(rows)
    assert report["duplicates_dropped"] >= 60
    for r in rows:
        conv = r["conversations"]
        assert set(r) == {"id", "conversations"} and conv[-1]["role"] == "assistant" and conv[-1]["content"]
        assert all(set(t) == {"role", "content"} for t in conv)
    mix = Counter(r["id"].split("-", 1)[0] for r in rows)
    for c, share in SERVED.items():
        assert abs(mix[c] / len(rows) - prof.content_class_mix[c]) <= 0.01, (c, mix)
    # within each class, output lengths follow the profile's buckets where the traffic has enough rows
    assert report["achieved_mix"] == pytest.approx(report["target_mix"], abs=0.01)
    text = out.read_text()
    assert "jane.doe@example.com" not in text
    assert report["rejects"] == 0 and (tmp_path / "corpus.rejects.jsonl").read_text() == ""
    assert report["gate"]["mask"] == "tokens" and report["gate"]["mask_tokens_min"] > 0
    assert stdout.strip().splitlines()[-1] == str(out)


def test_rows_that_would_train_nothing_are_rejected_and_listed(served_profile, tmp_path, tiny_models, capsys):
    rows = [{"messages": [{"role": "user", "content": "Tell me about the harbor."}], "completion": "It is old."},
            {"messages": [{"role": "user", "content": "Say nothing."}], "completion": "   "},
            {"messages": [{"role": "user", "content": "Read this: " + "river stone cloud " * 300}],
             "completion": "Done reading."}]
    traffic = tmp_path / "t.jsonl"
    traffic.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    rc, _, err = _cli(["corpus", "--profile", str(served_profile[0]), "--out", str(out), "--traffic", str(traffic),
                       "--chat-template", str(tiny_models[0]), "--max-length", "256"], capsys)
    rejects = _rows(tmp_path / "c.rejects.jsonl")
    assert {r["reason"] for r in rejects} == {"empty_assistant", "zero_mask_after_truncation"}
    assert all(r["conversations"] and r["line"] in (2, 3) for r in rejects)
    assert rc == 0 and len(_rows(out)) == 1 and "failed the chat-template gate" in err


def test_gate_catches_templates_that_drop_or_refuse_turns(tiny_models):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there."}]
    drops = cp.ChatTemplate("{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n{% endif %}"
                            "{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    with pytest.raises(cp._Reject) as e:
        cp.Gate(drops, None, 2048).check(conv)
    assert e.value.reason in ("assistant_not_in_render", "zero_mask", "assistant_content_altered")
    refuses = cp.ChatTemplate("{% for m in messages %}{% if m.role == 'system' %}"
                              "{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}"
                              "{% endfor %}")
    with pytest.raises(cp._Reject) as e:
        cp.Gate(refuses, None, 2048).check(conv)
    assert e.value.reason == "render_error" and "System role not supported" in e.value.detail
    tagged = cp.ChatTemplate("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
                             "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
                             "{% if add_generation_prompt %}<assistant>{% endif %}")
    stats = cp.Gate(tagged, None, 2048).check(conv)
    assert stats["mask_chars"] == len("Hello there.</s>")
    tok = cp.HFTokenizer(tiny_models[0])
    gate = cp.Gate(cp.load_template(tiny_models[0]), tok, 2048)
    stats = gate.check(conv)
    assert 0 < stats["mask_tokens"] < stats["tokens"]
    assert stats["mask_tokens"] == tok.count(["Hello there.<|end|>\n"])[0]


def test_direct_from_the_profiles_own_samples(tmp_path, tiny_models):
    log = tmp_path / "l.jsonl"
    st.generate(log, 300, {"chat": 0.5, "code": 0.5}, seed=3)
    prof = wp.profile_log(log, progress=False, keep_samples=20, tokenizer=str(tiny_models[0]))
    path = tmp_path / "p.json"
    wp.write_profile(prof, path)
    # no --chat-template: the profile's tokenizer folder has one
    assert main(["corpus", "--profile", str(path), "--out", str(tmp_path / "c.jsonl"), "--max-length", "65536"]) == 0
    rows = _rows(tmp_path / "c.jsonl")
    assert len(rows) == 40 and Counter(r["id"].split("-")[0] for r in rows) == {"chat": 20, "code": 20}


def test_plan_over_specforge_presets(served_profile, tmp_path, tiny_models, capsys):
    log = tmp_path / "l.jsonl"
    st.generate(log, 400, {"chat": 0.4, "reasoning": 0.3, "rewrite": 0.3}, seed=8)
    path = tmp_path / "p.json"
    wp.write_profile(wp.profile_log(log, progress=False), path)
    out = tmp_path / "plan.json"
    rc, stdout, err = _cli(["corpus", "--profile", str(path), "--out", str(out), "--mode", "plan", "--rows", "10000",
                            "--chat-template", str(tiny_models[0])], capsys)
    assert rc == 0
    plan = json.loads(out.read_text())
    assert plan["specforge_source"].startswith("sgl-project/SpecForge@")
    assert {e["preset"] for e in plan["entries"]} <= set(cp.SPECFORGE_PRESETS)
    assert sum(e["weight"] for e in plan["entries"]) == pytest.approx(1.0, abs=1e-4)
    assert abs(sum(e["sample_size"] for e in plan["entries"]) - 10000) <= len(plan["entries"])
    shares = Counter()
    for e in plan["entries"]:
        for c, w in e["classes"].items():
            shares[c] += w
        assert e["command"].startswith(f"python scripts/prepare_data.py --dataset {e['preset']} --sample-size ")
    assert shares == pytest.approx({"chat": 0.4, "reasoning": 0.3, "rewrite": 0.3}, abs=1e-4)
    assert any("regenerate" in n for n in plan["notes"]) and any("rewrite" in n for n in plan["notes"])
    assert plan["chat_template_probe"]["ok"] is True
    script = (tmp_path / "plan.sh").read_text()
    assert script.count("python scripts/prepare_data.py") == len(plan["entries"]) and "cat " in script


def test_bad_input(served_profile, traffic, tmp_path, capsys):
    prof_path = str(served_profile[0])
    notjson = tmp_path / "bad.json"
    notjson.write_text("{\n  \"requests\": 3,\n  oops\n}")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"requests": 3}))
    out = str(tmp_path / "c.jsonl")
    cases = [(["--profile", str(tmp_path / "missing.json")], "missing.json: no such file"),
             (["--profile", str(notjson)], "bad.json: not JSON (line 3"),
             (["--profile", str(other)], "not a workload profile"),
             (["--profile", prof_path, "--traffic", str(traffic)], "--chat-template is required"),
             (["--profile", prof_path, "--chat-template", str(tmp_path / "none.jinja")], "no such file"),
             (["--profile", prof_path, "--rows", "0"], "--rows"),
             (["--profile", prof_path, "--traffic", str(tmp_path / "no.jsonl"), "--chat-template",
               str(notjson)], "--chat-template")]
    for argv, needle in cases:
        rc, _, err = _cli(["corpus", "--out", out, *argv], capsys)
        assert rc == 2 and needle in err and err.startswith("specdec: error: "), (argv, err)
        assert len(err.strip().splitlines()) == 1
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    rc, _, err = _cli(["corpus", "--out", out, "--profile", prof_path, "--chat-template", str(tpl)], capsys)
    assert rc == 2 and "--keep-samples" in err  # direct mode without traffic or samples
