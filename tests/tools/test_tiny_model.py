import hashlib
import json
import shutil
import subprocess
import sys

from specdec_profiler import tiny_model


def test_builds_target_and_draft_with_a_shared_tokenizer(tiny_models):
    target, draft = tiny_models
    for d, arch_layers in ((target, tiny_model.TARGET.layers), (draft, tiny_model.DRAFT.layers)):
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == arch_layers
        log = json.loads((d / "training_log.json").read_text())
        assert log["loss_last_50_mean"] < log["loss_first"] - 3.0  # it learned something
        assert log["eval_loss"] < 5.5 and len(log["loss_curve"]) == log["steps"]
        assert (d / "specdec_tiny.json").is_file() and (d / "model.safetensors").is_file()
    sha = [hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest() for d in (target, draft)]
    assert sha[0] == sha[1]
    assert json.loads((target / "config.json").read_text())["hidden_size"] > \
        json.loads((draft / "config.json").read_text())["hidden_size"]


def test_tokenizer_has_a_chat_template(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[0])
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|end|>"
    ids = tok("def f(x):\n    return x", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "def f(x):\n    return x"


def test_reuse_is_verified_by_checksum(tiny_models, tmp_path):
    target, _ = tiny_models
    fp = json.loads((target / "specdec_tiny.json").read_text())["fingerprint"]
    assert tiny_model.verify(target, fp)
    copy = tmp_path / target.name
    shutil.copytree(target, copy)
    assert tiny_model.verify(copy, fp)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    assert not tiny_model.verify(copy, fp)
    assert not tiny_model.verify(target, "another-fingerprint")


def test_second_invocation_reuses_and_prints_the_folder_last(tiny_models):
    out = subprocess.run([sys.executable, "-m", "specdec_profiler.cli", "tiny-model"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "building" not in out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(tiny_models[0])
