"""SpecForge backend for ``specdec train``: render the run config and the commands that train an EAGLE-3 draft.

Checked against SpecForge **0.2.0** (PyPI wheel ``specforge-0.2.0-py3-none-any.whl``) and the repository
sgl-project/SpecForge at commit ``a6b6b0230009d15ec2a97a57384e6f53f0f96946`` (2026-08-08):

- ``specforge train --config run.yaml [--role ...] [--node-rank N] [--plan] [section.field=value ...]``
  (``specforge/cli.py``); the YAML is the typed ``specforge.config.Config`` (pydantic, ``extra="forbid"``:
  sections ``model``, ``data``, ``training``, ``tracking``, ``profiling``, ``runtime``, ``deployment`` plus
  ``run_id`` and ``output_dir``; ``specforge/config/schema.py``).
- ``specforge export --to sglang --checkpoint CKPT --draft-config JSON --output-dir DIR [--vocab-mapping PT]``.
  The runtime checkpoint is ``<output_dir>/<run_id>-latest`` (a symlink to the newest complete checkpoint).
  The exported directory is ``LlamaForCausalLMEagle3`` (SGLang's EAGLE3 loader; vLLM loads the same layout
  as ``{"method": "eagle3", "model": DIR}``).
- Offline hidden-state preparation is a script in the SpecForge *repository* (not in the wheel):
  ``torchrun --standalone --nproc_per_node G scripts/prepare_hidden_states.py --strategy eagle3
  --target-model-path T --data-path corpus.jsonl --output-path H --chat-template C --max-length L
  --tp-size 1 --batch-size B [--draft-model-config JSON]``. It writes the feature ``.ckpt`` files under ``H``
  and the vocabulary mapping at ``H/vocab_mapping/vocab_mapping.pt``. Its options are listed in
  :data:`PREPARE_HIDDEN_STATES_OPTIONS` (read from the script at the commit above; tests check every flag we
  render against that list, since the script cannot be imported without a GPU stack).

Two data paths, as SpecForge 0.2.0 defines them:

- ``online`` (default): ``data.train_data_path`` = the corpus JSONL. SpecForge 0.2.0 only trains online in
  ``deployment.mode: disaggregated`` (a patched SGLang capture server feeds the trainer through Mooncake).
  We render the single-node ``managed_local`` stack: the CLI itself starts Mooncake, ``--capture-gpus``
  capture servers (TP 1 each) and the trainer on the remaining GPUs, and tears them down. EAGLE3
  disaggregated runs need an explicit, shared vocabulary mapping (``--vocab-mapping``; SpecForge's run
  validation refuses one without it, even with equal vocabularies). One node only (managed_local's rule).
- ``offline`` (``--offline``, "when asked"): prepare hidden states first, then ``local_colocated`` training on
  ``data.hidden_states_path``; any number of nodes (``torchrun`` multi-node, SpecForge recognises the
  torchrun worker environment and does not launch again).

The draft architecture is written out as ``draft_config.json`` (``--draft-config`` to use your own): the
same derivation SpecForge does when ``model.draft_model_config`` is omitted (target architecture fields,
``LlamaForCausalLMEagle3``, one layer, ``draft_vocab_size`` 32000 or the target's vocabulary when smaller),
written down because ``specforge export`` needs the file and training and export must agree on it.

Global batch = ``training.batch_size`` (per rank) x world size x ``training.accumulation_steps``;
:func:`specdec_profiler.tune.space.batch_mapping` does the split for ``specdec tune``.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

SPECFORGE_VERSION = "0.2.0"
SPECFORGE_REPO_COMMIT = "a6b6b0230009d15ec2a97a57384e6f53f0f96946"
SPECFORGE_CHECKED = f"specforge {SPECFORGE_VERSION} (PyPI) / sgl-project/SpecForge@{SPECFORGE_REPO_COMMIT}"

# Every option of scripts/prepare_hidden_states.py at SPECFORGE_REPO_COMMIT (argparse, by name).
PREPARE_HIDDEN_STATES_OPTIONS = frozenset({
    "--batch-size", "--build-dataset-num-proc", "--cache-dir", "--chat-template", "--compress",
    "--compression-level", "--data-path", "--dist-timeout", "--draft-model-config", "--file-group-size",
    "--io-queue-size", "--is-preformatted", "--max-length", "--num-io-threads", "--num-samples",
    "--num-workers", "--output-path", "--sglang-attention-backend", "--sglang-context-length",
    "--sglang-enable-dp-attention", "--sglang-enable-dp-lm-head", "--sglang-enable-nccl-nvls",
    "--sglang-enable-symm-mem", "--sglang-enable-torch-compile", "--sglang-ep-size",
    "--sglang-mem-fraction-static", "--strategy", "--target-model-path", "--tp-size", "--trust-remote-code",
})
# specforge/data/template.py at SPECFORGE_REPO_COMMIT: the registered chat templates.
CHAT_TEMPLATES = frozenset({
    "custom", "llama3", "llama4", "qwen", "lfm", "phi3", "phi4", "phi4-mini", "gpt-oss-naive", "gpt-oss",
    "deepseek-r1-distill", "qwen3-thinking", "qwen3-instruct", "qwen3-next-thinking", "kimi-k2-thinking",
    "kimi-k2-instruct", "kimi-k3-thinking", "deepseek-v3", "deepseek-v2", "ling-flash-2.0", "deepseek-v32",
    "glm-5.2", "gemma", "longcat", "longcat_xml", "qwen3.5", "inkling-thinking",
})
# specforge/training/model_loading.py _TARGET_ARCHITECTURE_FIELDS (copied into a derived draft config).
_TARGET_ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "attention_bias",
    "attention_dropout", "head_dim", "rope_theta", "rope_scaling", "bos_token_id", "eos_token_id",
    "pad_token_id", "sliding_window", "use_sliding_window", "max_window_layers",
)
EAGLE3_DRAFT_VOCAB = 32000  # TargetDerivedDraftDefaults(draft_vocab_size=32000) for eagle3
DRAFT_ARCHITECTURE = "LlamaForCausalLMEagle3"


@dataclass
class SpecForgeOptions:
    """What ``specdec train --backend specforge`` needs; paths are as the job will see them."""

    corpus: str
    target: str
    run_dir: str                      # where run.yaml/draft_config.json live at run time and outputs go
    experiment: str                   # run_id and the name prefix of every launcher object
    offline: bool = False
    gpus_per_node: int = 1
    nodes: int = 1
    capture_gpus: int = 1             # online: GPUs for the managed capture servers (TP 1 each)
    chat_template: str = "llama3"
    max_length: int = 2048
    per_device_batch: int = 1
    accumulation: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.015
    num_epochs: int = 1
    max_steps: int | None = None
    ttt_length: int = 7
    save_interval: int = 0
    log_interval: int = 50
    seed: int = 42
    attention_backend: str = "flex_attention"
    draft_config: str | None = None   # an existing draft JSON; default: derived -> run_dir/draft_config.json
    vocab_mapping: str | None = None
    prepare_batch_size: int = 32
    specforge_repo: str = "${SPECFORGE_REPO:-/opt/SpecForge}"  # checkout holding scripts/prepare_hidden_states.py
    master_port: int = 29500
    trust_remote_code: bool = False
    export_dir: str | None = None     # default run_dir/export-sglang


@dataclass
class Step:
    """One command of the pipeline: ``argv`` may contain shell variables (``$SLURM_NODEID``) the launcher
    expands; ``per_node`` steps run once on every node, the others once."""

    name: str
    argv: list[str]
    per_node: bool = False
    gpus: int = 0  # GPUs the step uses per node (0: CPU only)

    def shell(self) -> str:
        return " ".join(_sh(a) for a in self.argv)


@dataclass
class RenderedRun:
    options: SpecForgeOptions
    files: dict[str, str]            # file name (relative to run_dir) -> content
    steps: list[Step]
    config: dict                     # the run config as a dict (what run.yaml holds)
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.options.nodes * self.trainer_gpus_per_node

    @property
    def trainer_gpus_per_node(self) -> int:
        o = self.options
        return o.gpus_per_node - (0 if o.offline else o.capture_gpus)

    @property
    def global_batch(self) -> int:
        return self.options.per_device_batch * self.world_size * self.options.accumulation


def _sh(arg: str) -> str:
    """Quote for a shell but leave ``$VAR``/``${VAR...}`` expandable (double quotes when needed)."""
    if "$" in arg:
        return '"' + arg.replace('"', '\\"') + '"'
    return shlex.quote(arg)


def derive_draft_config(target_config: dict, draft_vocab: int | None = None) -> dict:
    """SpecForge's eagle3 draft config derivation (model_loading._generate_draft_config) from a target's
    ``config.json`` dict (``text_config`` used when present)."""
    cfg = target_config.get("text_config") or target_config
    payload = {k: cfg[k] for k in _TARGET_ARCHITECTURE_FIELDS if cfg.get(k) is not None}
    payload["vocab_size"] = int(cfg.get("padded_vocab_size") or cfg["vocab_size"])
    if "hidden_size" not in payload:
        raise UsageError("target config.json has no hidden_size: cannot derive an EAGLE-3 draft config")
    if "rope_theta" not in payload and isinstance(cfg.get("rope_parameters"), dict):
        # transformers>=5 writes rope_parameters; SpecForge's loader reads rope_theta/rope_scaling
        rp = cfg["rope_parameters"]
        if rp.get("rope_theta") is not None:
            payload["rope_theta"] = rp["rope_theta"]
        if rp.get("rope_type", "default") != "default":
            payload["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    payload.update({
        "architectures": [DRAFT_ARCHITECTURE], "model_type": "llama", "num_hidden_layers": 1,
        "tie_word_embeddings": False, "use_cache": True,
    })
    if payload.get("pad_token_id") is None:
        payload["pad_token_id"] = 0
    payload["draft_vocab_size"] = int(draft_vocab or min(EAGLE3_DRAFT_VOCAB, payload["vocab_size"]))
    return payload


def _load_target_config(target: str) -> dict | None:
    p = Path(target).expanduser()
    f = p / "config.json" if p.is_dir() else p
    if f.is_file() and f.name == "config.json":
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{f}: not JSON ({err})") from None
    return None


def validate(o: SpecForgeOptions) -> None:
    if o.chat_template not in CHAT_TEMPLATES:
        raise UsageError(f"--chat-template {o.chat_template!r} is not a SpecForge {SPECFORGE_VERSION} template "
                         f"(one of: {', '.join(sorted(CHAT_TEMPLATES))})")
    for name in ("gpus_per_node", "nodes", "per_device_batch", "accumulation", "max_length", "num_epochs",
                 "ttt_length", "log_interval", "prepare_batch_size"):
        if getattr(o, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(o, name)})")
    if not o.learning_rate > 0:
        raise UsageError(f"--learning-rate must be > 0 (got {o.learning_rate})")
    if not 0.0 <= o.warmup_ratio <= 1.0:
        raise UsageError(f"--warmup-ratio must be in [0, 1] (got {o.warmup_ratio})")
    if not o.offline:
        if o.nodes != 1:
            raise UsageError("online SpecForge training (managed_local capture stack) runs on one node; "
                             "use --offline (prepare hidden states first) for --nodes > 1")
        if not 1 <= o.capture_gpus < o.gpus_per_node:
            raise UsageError(f"online training needs GPUs for the capture server(s) and the trainer: "
                             f"--capture-gpus {o.capture_gpus} of --gpus {o.gpus_per_node} leaves "
                             f"{o.gpus_per_node - o.capture_gpus} for training (need >= 1); or use --offline")


def render(o: SpecForgeOptions) -> RenderedRun:
    """The run config (run.yaml), draft config and the pipeline steps for one experiment."""
    validate(o)
    run_dir = o.run_dir.rstrip("/") or "."
    notes: list[str] = []
    files: dict[str, str] = {}
    if o.draft_config:
        draft_cfg_path = o.draft_config
    else:
        tcfg = _load_target_config(o.target)
        if tcfg is None:
            raise UsageError(f"--target {o.target!r}: no readable config.json here to derive the draft "
                             "config from (a hub id or a path only the cluster sees); pass --draft-config JSON")
        layers = (tcfg.get("text_config") or tcfg).get("num_hidden_layers")
        if isinstance(layers, int) and layers < 4:
            # specforge/algorithms/model_providers.py resolve_eagle_capture_layers: [1, L//2 - 1, L - 4]
            raise UsageError(f"--target {o.target!r} has {layers} layers: SpecForge {SPECFORGE_VERSION}'s EAGLE-3 "
                             "capture layers [1, L/2-1, L-4] need at least 4; use --backend local for tiny targets")
        dcfg = derive_draft_config(tcfg)
        files["draft_config.json"] = json.dumps(dcfg, indent=2) + "\n"
        draft_cfg_path = f"{run_dir}/draft_config.json"

    hidden = f"{run_dir}/hidden_states"
    vocab_mapping = o.vocab_mapping or ""
    if o.offline and not vocab_mapping:
        vocab_mapping = f"{hidden}/vocab_mapping/vocab_mapping.pt"  # written by prepare_hidden_states.py
    if not o.offline and not vocab_mapping:  # specforge/application/planning.py _validate_vocab_mapping
        raise UsageError("online (disaggregated) EAGLE-3 training in SpecForge needs an explicit shared "
                         "vocabulary mapping: pass --vocab-mapping PATH (e.g. from an earlier --offline "
                         "preparation, <hidden_states>/vocab_mapping/vocab_mapping.pt), or use --offline")

    trainer_gpus = o.gpus_per_node - (0 if o.offline else o.capture_gpus)
    training = {
        "strategy": "eagle3",
        "num_epochs": o.num_epochs,
        "batch_size": o.per_device_batch,
        "accumulation_steps": o.accumulation,
        "learning_rate": o.learning_rate,
        "warmup_ratio": o.warmup_ratio,
        "ttt_length": o.ttt_length,
        "attention_backend": o.attention_backend,
        "save_interval": o.save_interval,
        "log_interval": o.log_interval,
        "seed": o.seed,
    }
    if o.max_steps:
        training["max_steps"] = o.max_steps
    model = {
        "target_model_path": o.target,
        "draft_model_config": draft_cfg_path,
        "target_backend": "sglang",
        "vocab_mapping_path": vocab_mapping,
        "torch_dtype": "bfloat16",
    }
    if o.trust_remote_code:
        model["trust_remote_code"] = True
    data = {"max_length": o.max_length, "chat_template": o.chat_template, "cache_dir": f"{run_dir}/cache"}
    trainer = {"nnodes": o.nodes, "nproc_per_node": trainer_gpus, "master_port": o.master_port}
    if o.offline:
        data["hidden_states_path"] = hidden
        deployment = {"mode": "local_colocated", "trainer": trainer}
        if o.nodes > 1:
            # validated at load (nnodes > 1 needs master_addr); the launcher overrides it with the real host
            trainer["master_addr"] = "localhost"
    else:
        data["train_data_path"] = o.corpus
        deployment = {
            "mode": "disaggregated",
            "trainer": trainer,
            "disaggregated": {
                "control_dir": f"{run_dir}/control",
                "backend": "mooncake",
                "managed_local": {
                    "trainer_cuda_visible_devices": [str(i) for i in range(o.capture_gpus, o.gpus_per_node)],
                    "capture_servers": [
                        {"port": 30000 + i, "cuda_visible_devices": [str(i)], "tp_size": 1}
                        for i in range(o.capture_gpus)
                    ],
                },
            },
        }
        notes.append("online: SpecForge's managed_local stack needs the SGLang capture patch applied "
                     "(SpecForge scripts/apply_sglang_spec_capture_patch.sh) and Mooncake installed; "
                     "control_dir must not exist when training starts")
    config = {"model": model, "data": data, "training": training, "run_id": o.experiment,
              "output_dir": f"{run_dir}/outputs", "deployment": deployment}
    files["run.yaml"] = _to_yaml(config)

    cfg_path = f"{run_dir}/run.yaml"
    steps: list[Step] = []
    if o.offline:
        prep = ["torchrun", "--standalone", "--nproc_per_node", str(o.gpus_per_node),
                f"{o.specforge_repo}/scripts/prepare_hidden_states.py",
                "--strategy", "eagle3", "--target-model-path", o.target, "--draft-model-config", draft_cfg_path,
                "--data-path", o.corpus, "--output-path", hidden, "--chat-template", o.chat_template,
                "--max-length", str(o.max_length), "--tp-size", "1", "--batch-size", str(o.prepare_batch_size),
                "--cache-dir", f"{run_dir}/cache"]
        if o.trust_remote_code:
            prep.append("--trust-remote-code")
        steps.append(Step("prepare-hidden-states", prep, gpus=o.gpus_per_node))
    steps.append(Step("train", ["specforge", "train", "--config", cfg_path], gpus=o.gpus_per_node))
    export = ["specforge", "export", "--to", "sglang",
              "--checkpoint", f"{run_dir}/outputs/{o.experiment}-latest",
              "--draft-config", draft_cfg_path, "--output-dir", o.export_dir or f"{run_dir}/export-sglang"]
    if vocab_mapping:
        export += ["--vocab-mapping", vocab_mapping]
    steps.append(Step("export", export))
    return RenderedRun(o, files, steps, config, notes)


def multinode_train_argv(run: RenderedRun, node_rank: str, master_addr: str) -> list[str]:
    """The per-node ``torchrun`` line SpecForge's own launch plan builds for a multi-node offline run
    (``specforge train --plan --node-rank N`` prints the same argv), with the master address resolved at run
    time and passed on as a dotted override so the config's topology validates against it."""
    o = run.options
    return ["torchrun", "--nnodes", str(o.nodes), "--node_rank", node_rank, "--master_addr", master_addr,
            "--master_port", str(o.master_port), "--nproc_per_node", str(run.trainer_gpus_per_node),
            "--module", "specforge.cli", "train", "--config", f"{o.run_dir.rstrip('/')}/run.yaml",
            "--role", "all", f"deployment.trainer.master_addr={master_addr}"]


def write_files(run: RenderedRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in run.files.items():
        p = out_dir / name
        p.write_text(text)
        written.append(p)
    return written


# --- a small YAML writer (block style, the subset run configs use; no PyYAML needed to render) ---
def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return repr(v)
        raise ValueError(f"non-finite float {v} in a run config")
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _to_yaml(obj, indent: int = 0) -> str:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                lines.append(f"{pad}{k}:")
                lines.append(_to_yaml(v, indent + 1).rstrip("\n"))
            elif isinstance(v, list) and v:
                lines.append(f"{pad}{k}:")
                lines.append(_to_yaml(v, indent + 1).rstrip("\n"))
            elif isinstance(v, (dict, list)):
                lines.append(f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                inner = _to_yaml(v, indent + 1).rstrip("\n").split("\n")
                lines.append(f"{pad}- {inner[0].strip()}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {_scalar(v)}")
    return "\n".join(lines) + "\n"


# --- `specdec train --backend specforge` (the arguments and the command; profiler/train.py dispatches here)
def add_arguments(p) -> None:
    """The specforge backend's options on the ``specdec train`` parser (``--out``, ``--seed``, ``--corpus``,
    ``--target`` are the parser's shared ones)."""
    g = p.add_argument_group("--backend specforge")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print every file and command; write and run nothing")
    mode.add_argument("--submit", action="store_true", help="run (local) or submit (slurm/k8s) after rendering")
    g.add_argument("--launcher", choices=["local", "slurm", "k8s"], default="local")
    g.add_argument("--experiment", help="experiment id: run_id, job/object name prefix, k8s label "
                                        "(default: from the corpus file name)")
    g.add_argument("--run-dir", help="run directory as the job sees it (default: --out)")
    g.add_argument("--offline", action="store_true",
                   help="prepare hidden states first (scripts/prepare_hidden_states.py), then train on them")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per node (1)")
    g.add_argument("--nodes", type=int, default=1, help="nodes (1; more needs --offline)")
    g.add_argument("--capture-gpus", type=int, default=1, help="online: GPUs of the capture servers (1)")
    g.add_argument("--chat-template", default="llama3", help="SpecForge chat template name (llama3)")
    g.add_argument("--max-length", type=int, default=2048, help="SpecForge data.max_length (2048)")
    g.add_argument("--learning-rate", type=float, default=1e-4, help="SpecForge learning rate (1e-4)")
    g.add_argument("--warmup-ratio", type=float, default=0.015, help="SpecForge warmup ratio (0.015)")
    g.add_argument("--per-device-batch", type=int, default=1)
    g.add_argument("--accumulation", type=int, default=1)
    g.add_argument("--global-batch", type=int, help="split into per-device batch x GPUs x accumulation")
    g.add_argument("--max-per-device-batch", type=int, default=1,
                   help="with --global-batch: the largest per-device batch that fits memory (1)")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--ttt-length", type=int, default=7, help="SpecForge training.ttt_length (7)")
    g.add_argument("--save-interval", type=int, default=0)
    g.add_argument("--draft-config", help="draft config JSON (default: derived from the target's config.json)")
    g.add_argument("--vocab-mapping", help="target->draft vocabulary mapping .pt (online training needs one)")
    g.add_argument("--specforge-repo", default="${SPECFORGE_REPO:-/opt/SpecForge}",
                   help="SpecForge checkout holding scripts/ (as the job sees it)")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument("--time", default="24:00:00", help="slurm --time (24:00:00)")
    g.add_argument("--partition", help="slurm --partition")
    g.add_argument("--account", help="slurm --account")
    g.add_argument("--cpus-per-task", type=int, default=16, help="slurm --cpus-per-task (16)")
    g.add_argument("--image", default="lmsysorg/sglang:latest", help="k8s container image with SpecForge")
    g.add_argument("--namespace", help="k8s namespace")
    g.add_argument("--k8s-pvc", help="k8s PersistentVolumeClaim holding the corpus and the run directory")
    g.add_argument("--k8s-mount", default="/workspace", help="k8s mount point of the claim (/workspace)")


def _experiment_from(args) -> str:
    if getattr(args, "experiment", None):
        return args.experiment
    import re

    stem = re.sub(r"[^a-z0-9-]+", "-", Path(args.corpus).stem.lower()).strip("-") or "draft"
    return f"{stem[:30].strip('-')}-eagle3"


def command(args) -> int:
    """``specdec train --backend specforge``: render, write to ``--out`` (or print with ``--dry-run``),
    and run/submit only with ``--submit``."""
    import sys

    from . import launchers

    exp = launchers.check_experiment(_experiment_from(args))
    run_dir = args.run_dir or args.out
    per_device, accum = args.per_device_batch, args.accumulation
    if args.global_batch:
        from .tune.space import batch_mapping

        trainer_gpus = args.gpus - (0 if args.offline else args.capture_gpus)
        per_device, accum = batch_mapping(args.global_batch, max(trainer_gpus, 1) * args.nodes,
                                          args.max_per_device_batch)
    opts = SpecForgeOptions(
        corpus=args.corpus, target=args.target, run_dir=run_dir, experiment=exp, offline=args.offline,
        gpus_per_node=args.gpus, nodes=args.nodes, capture_gpus=args.capture_gpus,
        chat_template=args.chat_template, max_length=args.max_length, per_device_batch=per_device,
        accumulation=accum, learning_rate=args.learning_rate, warmup_ratio=args.warmup_ratio,
        num_epochs=args.epochs, max_steps=args.max_steps, ttt_length=args.ttt_length,
        save_interval=args.save_interval, seed=args.seed, draft_config=args.draft_config,
        vocab_mapping=args.vocab_mapping, specforge_repo=args.specforge_repo,
        trust_remote_code=args.trust_remote_code,
    )
    run = render(opts)
    lopts = launchers.LaunchOptions(kind=args.launcher, time=args.time, partition=args.partition,
                                    account=args.account, cpus_per_task=args.cpus_per_task, image=args.image,
                                    namespace=args.namespace, pvc=args.k8s_pvc, mount=args.k8s_mount)
    out_dir = Path(args.out)
    lp = launchers.plan(run, lopts, out_dir)
    head = [f"# specdec train: backend specforge ({SPECFORGE_CHECKED}), experiment {exp}, "
            f"{'offline' if args.offline else 'online'}, global batch {run.global_batch} = {per_device} per "
            f"device x {run.world_size} GPU(s) x {accum} accumulation"] + [f"# note: {n}" for n in run.notes]
    print("\n".join(head))
    if args.dry_run:
        sys.stdout.write(lp.render_text(out_dir))
        return 0
    for p in launchers.write(lp, out_dir):
        print(f"wrote {p}")
    if not args.submit:
        print("not submitted (add --submit): " + "; ".join(" ".join(c) for c in lp.submit))
        return 0
    return launchers.submit(lp)
