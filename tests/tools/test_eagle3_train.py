"""The local EAGLE-3 trainer (torch only, seconds): capture probe, unroll = vLLM's drafting, acc_len, log parser,
gate, bad input, checkpoint resume, export format."""

from __future__ import annotations

import json
import math

import pytest
import torch

from specdec_profiler import cli
from specdec_profiler.eagle3 import capture, data, export, logs, model, trainer
from specdec_profiler.errors import UsageError


@pytest.fixture(scope="module")
def small_target():
    """A random 4-layer Llama with non-trivial norm weights (so a normed-twice capture is visibly wrong)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.3, 2.0)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _rows(n=24, t=17, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable stream: arithmetic sequences mod vocab with a per-row step
    start = torch.randint(0, vocab, (n, 1), generator=g)
    step = torch.randint(1, 4, (n, 1), generator=g)
    return (start + step * torch.arange(t)) % vocab


# ----------------------------------------------------------------------------- probe
def test_probe_passes_on_the_right_capture(small_target):
    x = _rows(4)
    rec = capture.probe(small_target, x, capture.default_aux_layer_ids(4))
    assert rec["passed"] and rec["max_abs_logit_diff"] < 1e-4 and rec["layer_ids"] == [1, 2, 3]


@pytest.mark.parametrize("bug", ["off_by_one", "hf_last_hidden_state"])
def test_probe_catches_a_broken_capture(small_target, monkeypatch, bug):
    real = capture._stream

    def broken(hs, final, layer_id, num_layers):
        if bug == "off_by_one":  # "output of layer i" mistaken for "input of layer i"
            return hs[layer_id - 1] if layer_id < num_layers else hs[num_layers - 1]
        return hs[num_layers] if layer_id == num_layers else real(hs, final, layer_id, num_layers)  # normed twice

    monkeypatch.setattr(capture, "_stream", broken)
    with pytest.raises(capture.CaptureError, match="probe failed.*max \\|diff\\|"):
        capture.probe(small_target, _rows(4), (1, 2, 3))


def test_training_refuses_to_start_on_a_broken_capture(small_target, monkeypatch, tmp_path):
    monkeypatch.setattr(capture, "_stream", lambda hs, final, i, n: hs[max(0, i - 1)])
    cfg = trainer.TrainConfig(steps=2, batch=4, checkpoint_every=0, draft_vocab=64)
    with pytest.raises(capture.CaptureError):
        trainer.train(small_target, _rows(), _rows(4, seed=1), cfg, tmp_path, (1, 2, 3),
                      torch.arange(64) * 2, log=lambda m: None)
    assert not (tmp_path / "checkpoints").exists()


def test_aux_layer_choice_follows_vllm_and_survives_shallow_targets():
    assert capture.default_aux_layer_ids(32) == (2, 16, 29)  # vLLM's (2, L//2, L-3)
    assert capture.default_aux_layer_ids(4) == (1, 2, 3)     # vLLM's would be (2, 2, 1) -> 2 distinct streams
    assert len(set(capture.default_aux_layer_ids(3))) == 3
    with pytest.raises(UsageError):
        capture.default_aux_layer_ids(2)


# ----------------------------------------------------------------------------- unroll == vLLM drafting
def _reference_chain(head, aux, tokens, t, steps):
    """Draft step by step for the chain starting at position t, with a KV cache, as vLLM's proposer does."""
    c = head.c
    attn = head.attn
    ks, vs, out = [], [], []
    # step 0 over the verified prefix 0..t (the draft's KV for it), positions 0..t
    x, res = head._pre(tokens[None, 1:t + 2], head.first_hidden(aux[None, :t + 1]))
    q, k, v = attn.qkv(x, torch.arange(t + 1))
    ks.append(k)
    vs.append(v)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
    s = s.masked_fill(~torch.ones(t + 1, t + 1, dtype=torch.bool).tril(), float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(1, t + 1, -1)
    normed, hidden = head._post(attn.o_proj(o), res)
    out.append(head.lm_head(normed[0, t]))
    hidden = hidden[:, t:t + 1]
    for kstep in range(1, steps):
        x, res = head._pre(tokens[None, t + 1 + kstep:t + 2 + kstep], hidden)
        q, k, v = attn.qkv(x, torch.tensor([t + kstep]))
        ks.append(k)
        vs.append(v)
        kk, vv = torch.cat(ks, dim=2), torch.cat(vs, dim=2)
        o = ((q @ kk.transpose(-1, -2)) / math.sqrt(c.head_dim)).softmax(-1) @ vv
        normed, hidden = head._post(attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1)), res)
        out.append(head.lm_head(normed[0, 0]))
    return out


@pytest.mark.parametrize("kind", ["eagle3", "eagle"])
def test_training_time_test_unroll_equals_step_by_step_drafting(small_target, kind):
    torch.manual_seed(1)
    aux_ids = (capture.TARGET_OUTPUT,) if kind == "eagle" else (1, 2, 3)
    hc = trainer.head_config_for(small_target.config, aux_ids, 128 if kind == "eagle" else 64, kind)
    head = trainer.make_head(small_target, hc, torch.arange(hc.draft_vocab)).eval()
    x = _rows(2, 20)
    cap = capture.capture(small_target, x, aux_ids)
    with torch.no_grad():
        outs = head.unroll(cap.aux, x, 3)
        for b in range(2):
            for t in (0, 5, 15):
                ref = _reference_chain(head, cap.aux[b], x[b], t, 3)
                for k in range(3):
                    assert torch.allclose(outs[k][b, t], ref[k], atol=1e-5), (b, t, k)


# ----------------------------------------------------------------------------- metrics, gate
def test_simulated_acc_len_is_the_sum_of_prefix_products():
    assert trainer.simulated_acc_len([0.8, 0.5, 0.5]) == pytest.approx(0.8 + 0.4 + 0.2)
    assert trainer.simulated_acc_len([1.0, 1.0, 1.0]) == 3.0
    assert trainer.simulated_acc_len([0.0, 0.9]) == 0.0
    assert trainer.simulated_acc_len([]) == 0.0


def test_gate_names_the_numbers():
    good = {"loss_first": 7.0, "loss_last": 3.0, "acc": [0.6, 0.5], "chance": 0.08}
    assert trainer.check_gate(good)["passed"]
    with pytest.raises(trainer.GateError, match=r"loss did not fall: first 7\.0000 -> last 6\.9000"):
        trainer.check_gate({**good, "loss_last": 6.9})
    with pytest.raises(trainer.GateError, match=r"acc_0 0\.0800 is not above chance 0\.0800"):
        trainer.check_gate({**good, "acc": [0.08, 0.0]})
    with pytest.raises(trainer.GateError, match="no usable loss curve"):
        trainer.check_gate({**good, "loss_last": float("nan")})


def test_degenerate_training_fails_the_gate_and_leaves_the_log(small_target, tmp_path):
    cfg = trainer.TrainConfig(steps=4, batch=4, lr=1e-9, warmup=1, checkpoint_every=0, draft_vocab=64, ttt=2)
    with pytest.raises(trainer.GateError, match="loss did not fall"):
        trainer.train(small_target, _rows(), _rows(4, seed=1), cfg, tmp_path, (1, 2, 3),
                      data.select_draft_vocab(_rows(), 128, 64), log=lambda m: None)
    rec = json.loads((tmp_path / "training_log.json").read_text())
    assert rec["gate"]["passed"] is False and rec["loss_first"] is not None


def test_training_learns_and_the_record_has_the_numbers(small_target, tmp_path):
    rows = _rows(64, 17)
    cfg = trainer.TrainConfig(steps=60, batch=8, lr=1e-2, warmup=5, checkpoint_every=0, draft_vocab=128, ttt=3)
    head, rec = trainer.train(small_target, rows, _rows(8, 17, seed=3), cfg, tmp_path, (1, 2, 3),
                              torch.arange(128), log=lambda m: None)
    assert rec["gate"]["passed"] and rec["loss_last"] < rec["loss_first"]
    assert len(rec["acc"]) == 3 and rec["acc"][0] > rec["chance"]
    assert rec["simulated_acc_len"] == pytest.approx(trainer.simulated_acc_len(rec["acc"]), abs=1e-3)
    assert rec["samples_seen"] == 60 * 8 and len(rec["history"]) == 60 and rec["probe"]["passed"]


# ----------------------------------------------------------------------------- checkpoint / resume
def test_resume_from_checkpoint_equals_an_uninterrupted_run(small_target, tmp_path):
    rows, ev = _rows(32), _rows(4, seed=1)
    dv = torch.arange(0, 128, 2)
    kw = dict(batch=4, lr=5e-3, warmup=2, draft_vocab=64, ttt=2, checkpoint_every=3)
    quiet = lambda m: None  # noqa: E731
    full, rec_full = trainer.train(small_target, rows, ev, trainer.TrainConfig(steps=6, **kw), tmp_path / "a",
                                   (1, 2, 3), dv, log=quiet, gate=False)
    trainer.train(small_target, rows, ev, trainer.TrainConfig(steps=3, **kw), tmp_path / "b", (1, 2, 3), dv,
                  log=quiet, gate=False)
    msgs = []
    resumed, rec_res = trainer.train(small_target, rows, ev, trainer.TrainConfig(steps=6, **kw), tmp_path / "b",
                                     (1, 2, 3), dv, log=msgs.append, gate=False)
    assert any("resuming from" in m and "step 3/6" in m for m in msgs)
    assert rec_res["resumed_from"] == 3 and [h["loss"] for h in rec_res["history"]] == \
        [h["loss"] for h in rec_full["history"]]
    for k, v in full.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k
    assert len(list((tmp_path / "b" / "checkpoints").glob("step_*.pt"))) <= 2


# ----------------------------------------------------------------------------- export
def test_export_has_the_names_and_config_vllm_reads(small_target, tmp_path):
    hc = trainer.head_config_for(small_target.config, (1, 2, 3), 64)
    head = model.Eagle3Head(hc, small_target.model.embed_tokens.weight)
    ids = data.select_draft_vocab(_rows(), 128, 64)
    head.set_vocab(ids)
    out = export.export(head, small_target.config, tmp_path / "head", {"schema": trainer.LOG_SCHEMA})
    from safetensors.torch import load_file

    st = load_file(str(out / "model.safetensors"))
    assert set(st) == set(model.CHECKPOINT_KEYS) and "embed_tokens.weight" not in st
    assert st["midlayer.self_attn.q_proj.weight"].shape == (32, 64)  # attention over concat(embeds, hidden)
    assert st["fc.weight"].shape == (32, 3 * 32)
    assert torch.equal(torch.arange(64) + st["d2t"], ids) and st["t2d"].dtype == torch.bool
    assert int(st["t2d"].sum()) == 64 and bool(st["t2d"][ids].all())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == 64 and cfg["vocab_size"] == 128 and cfg["target_hidden_size"] == 32
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    back = export.load_head(out, small_target.model.embed_tokens.weight)
    cap = capture.capture(small_target, _rows(2), (1, 2, 3))
    with torch.no_grad():
        assert torch.allclose(head.unroll(cap.aux, _rows(2), 2)[1], back.unroll(cap.aux, _rows(2), 2)[1])


def test_draft_vocab_is_the_most_frequent_tokens_sorted():
    rows = torch.tensor([[5, 5, 5, 9, 9, 1, 7, 7, 7, 7]])
    assert data.select_draft_vocab(rows, 16, 3).tolist() == [5, 7, 9]
    assert data.select_draft_vocab(rows, 16, 16).tolist() == list(range(16))


# ----------------------------------------------------------------------------- log parser
def test_parser_reads_our_log(small_target, tmp_path):
    cfg = trainer.TrainConfig(steps=20, batch=4, lr=1e-2, warmup=2, checkpoint_every=0, draft_vocab=128, ttt=2)
    _, rec = trainer.train(small_target, _rows(), _rows(4, seed=1), cfg, tmp_path, (1, 2, 3), torch.arange(128),
                           log=lambda m: None, gate=False)
    (tmp_path / "training_log.json").write_text(json.dumps(rec))
    got = logs.parse_log(tmp_path / "training_log.json")
    assert got["backend"] == "local" and got["acc"] == rec["acc"] and got["samples_seen"] == 80
    assert got["loss_first"] == rec["loss_first"] and got["simulated_acc_len"] == pytest.approx(
        trainer.simulated_acc_len(rec["acc"]), abs=1e-4)


def test_parser_reads_specforge_tracker_lines(tmp_path):
    lines = [{"train/lr": 1e-4, "train/acc_0": 0.3 + 0.01 * s, "train/acc_1": 0.2, "train/acc_2": 0.1,
              "train/ploss_0": 4.0 - 0.1 * s, "train/ploss_1": 4.5, "train/ploss_2": 5.0, "step": 10 * s}
             for s in range(1, 21)]
    lines.append({"eval/acc_0": 0.55, "eval/acc_1": 0.4, "eval/acc_2": 0.3, "step": 200})
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rec = logs.parse_log(p, global_batch=32)
    assert rec["backend"] == "specforge" and rec["steps"] == 200 and rec["samples_seen"] == 6400
    assert rec["acc"] == [0.55, 0.4, 0.3]  # eval accuracy preferred over the last train batch
    assert rec["loss_first"] > rec["loss_last"]
    assert rec["simulated_acc_len"] == pytest.approx(0.55 + 0.55 * 0.4 + 0.55 * 0.4 * 0.3, abs=1e-4)
    assert trainer.check_gate({**rec, "chance": 0.01})["passed"]


def test_parser_reads_specforge_console_lines():
    text = "\n".join(
        [f"Train Epoch [{e}/3], position {i},  Acc: {0.2 * e + 0.1 - 0.05 * i:.2f}"
         for e in (1, 2, 3) for i in range(3)]
        + [f"Train Epoch [{e}/3], position {i}, pLoss: {6 - e - 0.1 * i:.2f}" for e in (1, 2, 3) for i in range(3)]
        + ["Training Epoch 2: 100%|##########| 500/500 [02:13<00:00,  3.37it/s, loss=2.13, acc=0.61, time=0.30s]"])
    rec = logs.parse_log(text, global_batch=8)
    assert rec["acc"] == [0.7, 0.65, 0.6] and rec["loss_first"] > rec["loss_last"]
    assert rec["steps"] == 500 and rec["samples_seen"] == 4000
    only_tqdm = logs.parse_log("Training Epoch 0:  45%|####5 | 450/1000 [02:13<02:43, 3.37it/s, loss=2.31, "
                               "acc=0.45, time=0.5s]\n")
    assert only_tqdm["acc"] == [] and only_tqdm["acc_mean"] == 0.45 and only_tqdm["steps"] == 450


def test_parser_rejects_what_is_not_a_training_log(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("hello\nworld\n")
    with pytest.raises(UsageError, match="not a training log"):
        logs.parse_log(p)


# ----------------------------------------------------------------------------- CLI bad input
def _cli(capsys, *argv):
    code = cli.main(["train", "--backend", "local", "--method", "eagle3", *argv])
    return code, capsys.readouterr().err


def _llama_folder(tmp_path, model_type="llama", arch="LlamaForCausalLM"):
    d = tmp_path / f"target-{model_type}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    return d


def test_cli_missing_corpus(tmp_path, capsys):
    code, err = _cli(capsys, "--corpus", str(tmp_path / "nope.jsonl"), "--target", str(_llama_folder(tmp_path)),
                     "--out", str(tmp_path / "o"))
    assert code == 2 and "nope.jsonl: no such file" in err and "Traceback" not in err


def test_cli_bad_json_line_names_the_line(tmp_path, capsys):
    c = tmp_path / "c.jsonl"
    good = json.dumps({"id": "a", "conversations": [{"role": "user", "content": "hi"}]})
    c.write_text(good + "\n" + good + "\n{not json\n")
    code, err = _cli(capsys, "--corpus", str(c), "--target", str(_llama_folder(tmp_path)), "--out", str(tmp_path))
    assert code == 2 and f"{c}:3: not a JSON object" in err
    c.write_text(good + "\n" + json.dumps({"id": "b", "conversations": [{"role": "user"}]}) + "\n")
    code, err = _cli(capsys, "--corpus", str(c), "--target", str(_llama_folder(tmp_path / "..")), "--out", "o")
    assert code == 2 and f"{c}:2: conversations[0] needs string 'role' and 'content'" in err


def test_cli_target_not_a_llama_folder(tmp_path, capsys):
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({"id": "a", "conversations": [{"role": "user", "content": "hi"}]}) + "\n")
    code, err = _cli(capsys, "--corpus", str(c), "--target", str(_llama_folder(tmp_path, "gpt2", "GPT2LMHeadModel")),
                     "--out", str(tmp_path / "o"))
    assert code == 2 and "Llama targets" in err and "'gpt2'" in err
    code, err = _cli(capsys, "--corpus", str(c), "--target", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no config.json" in err


def test_cli_bad_numbers(tmp_path, capsys):
    code, err = _cli(capsys, "--corpus", "c", "--target", "t", "--out", "o", "--steps", "0")
    assert code == 2 and "--steps must be >= 1" in err
    code, err = _cli(capsys, "--corpus", "c", "--target", "t", "--out", "o", "--ttt", "64")
    assert code == 2 and "--ttt (64) must be smaller than --seq-len (64)" in err


# ----------------------------------------------------------------------------- end to end on the tiny target
def test_cli_trains_exports_and_resumes_on_the_tiny_target(tiny_models, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    snippets = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n",
                "class A:\n    def __init__(self):\n        self.x = 1\n"]
    corpus.write_text("".join(json.dumps({"id": f"c{i}", "conversations": [
        {"role": "user", "content": f"Rewrite this code:\n{s}"}, {"role": "assistant", "content": s}]}) + "\n"
        for i, s in enumerate(snippets * 12)))
    out = tmp_path / "head"
    argv = ["train", "--backend", "local", "--method", "eagle3", "--corpus", str(corpus), "--target",
            str(tiny_models[0]), "--out", str(out), "--seq-len", "32", "--batch", "4", "--checkpoint-every", "2",
            "--draft-vocab", "512", "--eval-rows", "4", "--no-gate"]
    assert cli.main(argv + ["--steps", "2"]) == 0
    assert cli.main(argv + ["--steps", "4"]) == 0
    err = capsys.readouterr().err
    assert "capture probe passed" in err and "resuming from" in err and "step 2/4" in err
    rec = logs.parse_log(out / "training_log.json")
    assert rec["samples_seen"] == 16 and len(rec["acc"]) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["draft_vocab_size"] == 512
    assert json.loads((out / "specdec_eagle3.json").read_text())["files"]["model.safetensors"]
    # another run's checkpoints are refused, not silently mixed in
    assert cli.main(argv + ["--steps", "4", "--lr", "1e-3"]) == 2
    assert "holds checkpoints of a different run" in capsys.readouterr().err


def test_cli_trains_an_eagle1_head_on_the_tiny_target(tiny_models, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    s = "def add(a, b):\n    return a + b\n"
    corpus.write_text("".join(json.dumps({"id": f"c{i}", "conversations": [
        {"role": "user", "content": f"Rewrite this code:\n{s}"}, {"role": "assistant", "content": s}]}) + "\n"
        for i in range(24)))
    out = tmp_path / "head"
    argv = ["train", "--backend", "local", "--method", "eagle", "--corpus", str(corpus), "--target",
            str(tiny_models[0]), "--out", str(out), "--seq-len", "32", "--batch", "4", "--checkpoint-every", "2",
            "--eval-rows", "4", "--no-gate", "--steps", "2"]
    assert cli.main(argv) == 0
    assert "capture probe passed" in capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    target_cfg = json.loads((tiny_models[0] / "config.json").read_text())
    assert cfg["architectures"] == ["EagleLlamaForCausalLM"] and cfg["vocab_size"] == target_cfg["vocab_size"]
    assert json.loads((out / "specdec_eagle3.json").read_text())["role"] == "eagle"
    # checkpoints of an EAGLE-1 run are not resumed as an EAGLE-3 one, nor the other way round
    assert cli.main([a if a != "eagle" else "eagle3" for a in argv]) == 2
    assert "holds checkpoints of a different run" in capsys.readouterr().err
    # SpecForge renders EAGLE-3 runs only: said before anything is rendered
    assert cli.main(["train", "--backend", "specforge", "--method", "eagle", "--corpus", str(corpus), "--target",
                     str(tiny_models[0]), "--out", str(tmp_path / "sf")]) == 2
    assert "renders EAGLE-3 runs only; train eagle heads with --backend local" in capsys.readouterr().err


# ----------------------------------------------------------------------------- EAGLE-1 (base "eagle")
def test_eagle1_feature_is_the_target_output_hidden_state(small_target):
    x = _rows(4)
    cap = capture.capture(small_target, x, (capture.TARGET_OUTPUT,))
    with torch.no_grad():
        assert torch.allclose(small_target.lm_head(cap.aux), cap.logits, atol=1e-4)  # what vLLM hands the head
    assert capture.probe(small_target, x, (capture.TARGET_OUTPUT,))["passed"]


def test_eagle1_trains_exports_as_vllm_loads_and_reads_back(small_target, tmp_path):
    rows = _rows(64, 17)
    # the random target's distribution is nearly flat; its lm_head is frozen in the head, so it takes longer
    cfg = trainer.TrainConfig(steps=120, batch=8, lr=3e-2, warmup=5, checkpoint_every=0, ttt=3)
    head, rec = trainer.train(small_target, rows, _rows(8, 17, seed=3), cfg, tmp_path / "w",
                              (capture.TARGET_OUTPUT,), torch.arange(128), log=lambda m: None, kind="eagle")
    assert rec["method"] == "eagle" and rec["gate"]["passed"] and rec["acc"][0] > rec["chance"]
    assert rec["draft_vocab"] == 128  # the full target vocabulary: EAGLE-1 has no d2t
    out = export.export(head, small_target.config, tmp_path / "head", rec)
    from safetensors.torch import load_file

    from specdec_profiler.eagle3 import eagle1

    st = load_file(str(out / "model.safetensors"))
    assert set(st) == set(eagle1.CHECKPOINT_KEYS)  # no embed_tokens / lm_head / input_layernorm: vLLM's layout
    assert st["fc.weight"].shape == (32, 2 * 32) and st["layers.0.self_attn.q_proj.weight"].shape == (32, 32)
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["architectures"] == ["EagleLlamaForCausalLM"] and cfg_json["hidden_size"] == 32
    assert "draft_vocab_size" not in cfg_json and "eagle_aux_hidden_state_layer_ids" not in cfg_json
    back = export.load_head(out, small_target.model.embed_tokens.weight, small_target.lm_head.weight)
    cap = capture.capture(small_target, _rows(2), (capture.TARGET_OUTPUT,))
    with torch.no_grad():
        assert torch.allclose(head.unroll(cap.aux, _rows(2), 2)[1], back.unroll(cap.aux, _rows(2), 2)[1])


def test_eagle1_refuses_aux_layers(small_target, tmp_path):
    cfg = trainer.TrainConfig(steps=2, batch=4, checkpoint_every=0)
    with pytest.raises(ValueError, match="output hidden state only"):
        trainer.train(small_target, _rows(), _rows(4, seed=1), cfg, tmp_path, (1, 2, 3), torch.arange(128),
                      log=lambda m: None, kind="eagle")
