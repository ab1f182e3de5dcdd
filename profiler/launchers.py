"""Launchers for a rendered training run (:mod:`specdec_profiler.specforge`): local, Slurm, Kubernetes.

Each launcher turns a :class:`~specdec_profiler.specforge.RenderedRun` into a :class:`LaunchPlan`: the files
it writes (config, draft config, ``run.sh`` / sbatch script / manifests), the commands that submit it, and
the teardown command. Nothing runs or is submitted unless the caller asks (``specdec train --submit``);
``--dry-run`` prints the plan and writes nothing.

- ``local``: ``run.sh`` runs the steps one after the other in a subprocess (``bash run.sh``).
- ``slurm``: one sbatch script. The steps run in the allocation: preparation and export on one node
  (``srun --nodes=1 --ntasks=1``), training on every node, one task per node; multi-node offline training is
  a ``torchrun`` line per node (node rank ``$SLURM_NODEID``, master = the first host of the allocation),
  the same argv SpecForge's own launch plan builds. Submitted with ``sbatch --parsable``; the job name is
  ``<experiment>-train`` and teardown is ``scancel --name=<experiment>-train``.
- ``k8s``: a ConfigMap (run.yaml, draft_config.json), and one Job per step (``<experiment>-prepare``,
  ``-train``, ``-export``), every object labelled ``experiment=<experiment>``. Steps must run in order, so
  submission applies one Job, ``kubectl wait``s for it to complete, then applies the next. Multi-node
  training is an Indexed Job (``completionMode: Indexed``, node rank ``$JOB_COMPLETION_INDEX``) with a
  headless Service ``<experiment>-train`` as the pods' subdomain, so rank 0 is
  ``<experiment>-train-0.<experiment>-train``. The run directory must be on a shared volume
  (``--k8s-pvc``, mounted at ``--k8s-mount``); the config files are copied there from the ConfigMap.
  Teardown: ``kubectl delete job,service,configmap -l experiment=<experiment>``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .specforge import RenderedRun, Step, _sh, _to_yaml, multinode_train_argv

EXPERIMENT_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
EXPERIMENT_MAX = 40  # "<exp>-prepare" job names, "<exp>-train-<i>" pod hostnames stay under 63
SLURM_TIME_RE = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
CONFIG_MOUNT = "/etc/specdec/config"


def check_experiment(exp: str) -> str:
    if not EXPERIMENT_RE.match(exp) or len(exp) > EXPERIMENT_MAX:
        raise UsageError(f"--experiment {exp!r}: use lowercase letters, digits and '-', starting and ending "
                         f"with a letter or digit, at most {EXPERIMENT_MAX} characters (it prefixes Kubernetes "
                         "object names and Slurm job names)")
    return exp


@dataclass
class LaunchOptions:
    kind: str                          # local | slurm | k8s
    time: str = "24:00:00"             # slurm --time
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int = 16
    image: str = "lmsysorg/sglang:latest"  # k8s container image with SpecForge installed
    namespace: str | None = None
    pvc: str | None = None
    mount: str = "/workspace"
    gpu_resource: str = "nvidia.com/gpu"


@dataclass
class LaunchPlan:
    launcher: str
    files: dict[str, str]              # path (relative to the output folder) -> content
    submit: list[list[str]]            # commands run by --submit, in order
    teardown: list[str] | None
    summary: list[str] = field(default_factory=list)

    def render_text(self, out_dir: Path) -> str:
        lines = [f"# launcher: {self.launcher}", *[f"# {s}" for s in self.summary]]
        for name, text in self.files.items():
            lines += [f"### file {out_dir / name}", text.rstrip("\n")]
        lines.append("### submit (with --submit)")
        lines += [" ".join(shlex.quote(a) for a in cmd) for cmd in self.submit]
        if self.teardown:
            lines += ["### teardown", " ".join(shlex.quote(a) for a in self.teardown)]
        return "\n".join(lines) + "\n"


def _config_files(run: RenderedRun) -> dict[str, str]:
    return dict(run.files)


# ----------------------------------------------------------------------------------------------- local
def local_plan(run: RenderedRun, opts: LaunchOptions, out_dir: Path) -> LaunchPlan:
    o = run.options
    script = ["#!/usr/bin/env bash", f"# specdec train --backend specforge --launcher local: {o.experiment}",
              "set -euo pipefail", f"mkdir -p {_sh(o.run_dir)}"]
    if o.nodes != 1:
        raise UsageError("--launcher local runs on this machine: --nodes must be 1")
    for step in run.steps:
        script += [f"echo '== {step.name}' >&2", step.shell()]
    files = {**_config_files(run), "run.sh": "\n".join(script) + "\n"}
    return LaunchPlan("local", files, [["bash", str(out_dir / "run.sh")]], None,
                      [f"steps: {', '.join(s.name for s in run.steps)}"])


# ----------------------------------------------------------------------------------------------- slurm
def slurm_plan(run: RenderedRun, opts: LaunchOptions, out_dir: Path) -> LaunchPlan:
    o = run.options
    if not SLURM_TIME_RE.match(opts.time):
        raise UsageError(f"--time {opts.time!r}: Slurm wants minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                         "D-HH:MM:SS")
    job = f"{o.experiment}-train"
    sb = {
        "job-name": job,
        "nodes": str(o.nodes),
        "ntasks-per-node": "1",
        "gpus-per-node": str(o.gpus_per_node),
        "cpus-per-task": str(opts.cpus_per_task),
        "time": opts.time,
        "output": f"{o.run_dir.rstrip('/')}/slurm-%j.out",
        "comment": f"experiment={o.experiment}",
    }
    if opts.partition:
        sb["partition"] = opts.partition
    if opts.account:
        sb["account"] = opts.account
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={v}" for k, v in sb.items()]
    lines += [
        f"# specdec train --backend specforge --launcher slurm: {o.experiment} ({run.world_size} trainer GPUs, "
        f"global batch {run.global_batch})",
        "set -euo pipefail",
        f"mkdir -p {_sh(o.run_dir)}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
    ]
    for step in run.steps:
        lines.append(f"echo '== {step.name}' >&2")
        if step.name == "train" and o.nodes > 1:
            argv = multinode_train_argv(run, "$SLURM_NODEID", "$MASTER_ADDR")
            inner = " ".join(_sh(a) for a in argv)
            lines.append(f"srun --nodes={o.nodes} --ntasks-per-node=1 bash -c {shlex.quote(inner)}")
        else:
            lines.append(f"srun --nodes=1 --ntasks=1 {step.shell()}")
    files = {**_config_files(run), f"{o.experiment}.sbatch": "\n".join(lines) + "\n"}
    return LaunchPlan("slurm", files, [["sbatch", "--parsable", str(out_dir / f"{o.experiment}.sbatch")]],
                      ["scancel", f"--name={job}"],
                      [f"sbatch job {job}: {o.nodes} node(s) x {o.gpus_per_node} GPU(s), time {opts.time}"])


# ----------------------------------------------------------------------------------------------- k8s
def _labels(exp: str, step: str | None = None) -> dict:
    labels = {"experiment": exp, "app.kubernetes.io/part-of": "specdec"}
    if step:
        labels["specdec/step"] = step
    return labels


def _meta(name: str, exp: str, ns: str | None, step: str | None = None) -> dict:
    m = {"name": name, "labels": _labels(exp, step)}
    if ns:
        m["namespace"] = ns
    return m


def _job(run: RenderedRun, opts: LaunchOptions, step: Step, script: str, *, indexed: bool) -> dict:
    o = run.options
    name = f"{o.experiment}-{step.name.split('-')[0]}"
    container = {
        "name": step.name,
        "image": opts.image,
        "command": ["bash", "-c", script],
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": opts.mount},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    if step.gpus:
        container["resources"] = {"limits": {opts.gpu_resource: str(step.gpus)}}
    if indexed:
        container["ports"] = [{"containerPort": o.master_port, "name": "rendezvous"}]
    pod_spec = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{o.experiment}-config"}},
            {"name": "work", "persistentVolumeClaim": {"claimName": opts.pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    spec = {"backoffLimit": 0, "template": {"metadata": {"labels": _labels(o.experiment, step.name)},
                                            "spec": pod_spec}}
    if indexed:
        spec.update({"completions": o.nodes, "parallelism": o.nodes, "completionMode": "Indexed"})
        pod_spec["subdomain"] = name
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(name, o.experiment, opts.namespace,
                                                                          step.name), "spec": spec}


def k8s_objects(run: RenderedRun, opts: LaunchOptions) -> list[dict]:
    o = run.options
    if not opts.pvc:
        raise UsageError("--launcher k8s needs --k8s-pvc NAME: a shared volume (ReadWriteMany for several "
                         "nodes) holding the corpus and the run directory")
    if not (o.run_dir.startswith(opts.mount.rstrip("/") + "/") and o.corpus.startswith(opts.mount.rstrip("/") + "/")):
        raise UsageError(f"--launcher k8s: --run-dir ({o.run_dir}) and --corpus ({o.corpus}) must be paths on "
                         f"the shared volume as the pods see it (under --k8s-mount {opts.mount})")
    exp = o.experiment
    objs: list[dict] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{exp}-config", exp, opts.namespace),
        "data": dict(run.files),
    }]
    copy = (f"mkdir -p {_sh(o.run_dir)} && cp {CONFIG_MOUNT}/* {_sh(o.run_dir)}/ && ")
    multi = o.nodes > 1
    for step in run.steps:
        if step.name == "train" and multi:
            svc = f"{exp}-train"
            objs.append({
                "apiVersion": "v1", "kind": "Service", "metadata": _meta(svc, exp, opts.namespace, "train"),
                "spec": {"clusterIP": "None", "selector": {"experiment": exp, "specdec/step": "train"},
                         "ports": [{"name": "rendezvous", "port": o.master_port, "targetPort": o.master_port}]},
            })
            argv = multinode_train_argv(run, "$JOB_COMPLETION_INDEX", f"{svc}-0.{svc}")
            cmd = " ".join(_sh(a) for a in argv)
            objs.append(_job(run, opts, step, copy + cmd, indexed=True))
        else:
            objs.append(_job(run, opts, step, copy + step.shell(), indexed=False))
    return objs


def k8s_plan(run: RenderedRun, opts: LaunchOptions, out_dir: Path) -> LaunchPlan:
    o = run.options
    objs = k8s_objects(run, opts)
    ns = ["-n", opts.namespace] if opts.namespace else []
    files = dict(run.files)
    submit: list[list[str]] = []
    base = [obj for obj in objs if obj["kind"] != "Job"]
    files[f"{o.experiment}.k8s/00-base.yaml"] = "---\n".join(_to_yaml(x) for x in base)
    submit.append(["kubectl", *ns, "apply", "-f", str(out_dir / f"{o.experiment}.k8s/00-base.yaml")])
    jobs = [obj for obj in objs if obj["kind"] == "Job"]
    for i, job in enumerate(jobs, start=1):
        fname = f"{o.experiment}.k8s/{i}0-{job['metadata']['name']}.yaml"
        files[fname] = _to_yaml(job)
        submit.append(["kubectl", *ns, "apply", "-f", str(out_dir / fname)])
        submit.append(["kubectl", *ns, "wait", "--for=condition=complete", "--timeout=-1s",
                       f"job/{job['metadata']['name']}"])
    files[f"{o.experiment}.k8s/all.yaml"] = "---\n".join(_to_yaml(x) for x in objs)
    return LaunchPlan("k8s", files, submit,
                      ["kubectl", *ns, "delete", "job,service,configmap", "-l", f"experiment={o.experiment}"],
                      [f"jobs: {', '.join(j['metadata']['name'] for j in jobs)} (applied in order, each waited "
                       "for); all.yaml holds every object for review, not for one apply"])


PLANNERS = {"local": local_plan, "slurm": slurm_plan, "k8s": k8s_plan}


def plan(run: RenderedRun, opts: LaunchOptions, out_dir: Path) -> LaunchPlan:
    check_experiment(run.options.experiment)
    try:
        planner = PLANNERS[opts.kind]
    except KeyError:
        raise UsageError(f"--launcher {opts.kind!r}: one of {', '.join(PLANNERS)}") from None
    return planner(run, opts, out_dir)


def write(lp: LaunchPlan, out_dir: Path) -> list[Path]:
    written = []
    for name, text in lp.files.items():
        p = out_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if p.suffix in (".sh", ".sbatch"):
            p.chmod(0o755)
        written.append(p)
    return written


def submit(lp: LaunchPlan) -> int:
    """Run the submit commands in order; stop at the first failure and return its exit code."""
    for cmd in lp.submit:
        print("+ " + " ".join(shlex.quote(a) for a in cmd), file=sys.stderr, flush=True)
        try:
            rc = subprocess.run(cmd).returncode
        except FileNotFoundError:
            raise UsageError(f"{cmd[0]} not found on PATH: cannot submit with --launcher {lp.launcher}") from None
        if rc != 0:
            print(f"specdec train: {cmd[0]} exited {rc}", file=sys.stderr)
            return rc
    if lp.teardown:
        print("teardown: " + " ".join(shlex.quote(a) for a in lp.teardown), file=sys.stderr)
    return 0


def manifest_objects(text: str) -> list[dict]:
    """Parse a multi-document manifest (PyYAML) - for tests and ``--dry-run`` consumers."""
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]


__all__ = ["LaunchOptions", "LaunchPlan", "plan", "write", "submit", "k8s_objects", "check_experiment",
           "manifest_objects"]
