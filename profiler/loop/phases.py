"""The oneshot pipeline: phases 0-5, each ending in a gate, with the state written after every phase.

A phase that finished (``done`` or ``skipped``) in the current experiment is not run again: a loop
killed mid-phase resumes at that phase (``--start-phase N`` re-runs from N, keeping 0..N-1).
Phases run the project's own commands as subprocesses, each with its command line and output
in the phase's evidence folder; SIGTERM stops the running command, records nothing for the
interrupted phase and leaves the state as it was after the last finished one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from . import arms, promote, report
from ..child_process import new_session_dying_with_parent
from .state import Experiment, PhaseRecord, ServiceState, save

PHASES = {0: "resolve", 1: "profile", 2: "corpus", 3: "train", 4: "ab", 5: "promote"}


class RedGate(Exception):
    """A gate said no: the loop stops with this reason; nothing advances past it."""


class Interrupted(Exception):
    """SIGTERM (or the controller's stop) while a phase ran: nothing recorded for that phase."""


@dataclass
class LoopOptions:
    target: str
    served: str
    standing_config: dict | None
    method: str
    workdir: Path
    state_path: Path
    profile: str | None = None
    aa_shapes: bool = False
    candidate_url: str | None = None
    served_model_name: str | None = None
    draft: str | None = None
    k: int | None = None
    start_phase: int | None = None
    until_phase: int = 5
    train_args: list[str] = field(default_factory=list)
    ab_trials: int = 3
    ab_requests: int = 12
    ab_concurrency: int = 4
    ab_max_tokens: int = 64
    ab_max_model_len: int = 2048
    ab_burn_in: int = 2
    aa_scale: float = 0.05
    min_requests: int = 20
    min_corpus_rows: int = 20
    min_gain: float = 0.0
    seed: int = 0


def new_experiment_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("exp-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Pipeline:
    def __init__(self, opts: LoopOptions, state: ServiceState, stop: threading.Event | None = None,
                 log: Callable[[str], None] | None = None):
        self.o = opts
        self.state = state
        self.stop = stop or threading.Event()
        self.log = log or (lambda m: print(f"specdec loop: {m}", file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ plumbing
    @property
    def exp(self) -> Experiment:
        assert self.state.current is not None
        return self.state.current

    def phase_dir(self, n: int) -> Path:
        d = Path(self.exp.evidence_dir) / f"phase-{n}-{PHASES[n]}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def output(self, n: int, key: str):
        return self.exp.phases[str(n)].outputs.get(key)

    def _save(self) -> None:
        save(self.o.state_path, self.state)

    def command(self, name: str, argv: list[str], where: Path) -> str:
        """Run ``specdec <argv>`` with its output in ``where/<name>.log``; stoppable; returns stdout."""
        cmd = [sys.executable, "-m", "specdec_profiler.cli", *argv]
        (where / f"{name}.cmd").write_text(shlex.join(["specdec", *argv]) + "\n")
        out_path, err_path = where / f"{name}.stdout", where / f"{name}.log"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=new_session_dying_with_parent)
            while proc.poll() is None:
                if self.stop.wait(0.5):
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    raise Interrupted(f"stopped during `specdec {argv[0]}`")
        stdout = out_path.read_text(errors="replace")
        if proc.returncode != 0:
            tail = "\n".join(err_path.read_text(errors="replace").splitlines()[-6:])
            raise RedGate(f"`specdec {shlex.join(argv)}` exited {proc.returncode}: {tail.strip()} "
                          f"(full output: {err_path})")
        return stdout

    # ------------------------------------------------------------------ driver
    def begin(self, trigger: str) -> None:
        """Start a new experiment unless one is in progress (then resume it)."""
        cur = self.state.current
        if cur is not None and not cur.finished:
            if cur.method != self.o.method:
                raise UsageError(f"{self.o.state_path}: experiment {cur.experiment_id} ({cur.method}) is unfinished; "
                                 f"finish it with --method {cur.method}, or --fresh to abandon it")
            self.log(f"resuming {cur.experiment_id} ({', '.join(f'phase {k} {v.status}' for k, v in cur.phases.items()) or 'no phase done'})")
            return
        eid = new_experiment_id()
        ev = (self.o.workdir / eid).resolve()
        ev.mkdir(parents=True, exist_ok=True)
        self.state.current = Experiment(experiment_id=eid, evidence_dir=str(ev), method=self.o.method, trigger=trigger)
        self.state.experiment_id = eid
        self.state.event("experiment_started", experiment_id=eid, trigger=trigger)
        self._save()
        self.log(f"experiment {eid}: evidence in {ev}")

    def run(self, trigger: str = "oneshot") -> str:
        """Run phases to ``until_phase``; returns 'GO', 'NO-GO', 'stopped at phase N' or raises RedGate."""
        self.begin(trigger)
        start = self.o.start_phase
        if start is not None:
            for k in [k for k in self.exp.phases if int(k) >= start]:
                del self.exp.phases[k]
            self._save()
        steps = [self.p0_resolve, self.p1_profile, self.p2_corpus, self.p3_train, self.p4_ab, self.p5_promote]
        for n, step in enumerate(steps):
            if n > self.o.until_phase:
                return f"stopped after phase {self.o.until_phase}"
            if self.exp.done(n):
                continue
            if self.stop.is_set():
                raise Interrupted(f"stopped before phase {n}")
            self.log(f"phase {n} ({PHASES[n]}) ...")
            try:
                rec = step()
            except RedGate as red:
                self.exp.phases[str(n)] = PhaseRecord(status="red", gate=str(red))
                self.state.event("gate_red", experiment_id=self.exp.experiment_id, phase=n, reason=str(red))
                self.exp.finished = True
                self._save()
                report.write(self.state, self.o)
                raise
            self.exp.phases[str(n)] = rec
            self._save()
            self.log(f"phase {n} ({PHASES[n]}): {rec.status}: {rec.gate}")
        return self.exp.phases["5"].outputs["verdict"]

    # ------------------------------------------------------------------ phase 0
    def p0_resolve(self) -> PhaseRecord:
        o, missing = self.o, []
        t = Path(o.target)
        if not (t / "config.json").is_file():
            missing.append(f"--target {o.target}: no config.json (a Hugging Face model folder is needed)")
        if o.method not in promote.METHODS:
            missing.append(f"--method {o.method}: choose from {', '.join(promote.METHODS)}")
        if o.profile is None and not o.aa_shapes:
            missing.append("traffic: --profile access.jsonl or --aa-shapes")
        elif o.profile is not None and not Path(o.profile).is_file():
            missing.append(f"--profile {o.profile}: no such file")
        if o.method in promote.TRAINED and not o.draft:
            if o.method == "dflash":
                missing.append("--method dflash: there is no local dflash trainer; train it with "
                               "`specdec train --backend specforge` and pass --draft PATH")
            elif importlib.util.find_spec("specdec_profiler.eagle3") is None:
                missing.append("--method eagle3: the local trainer (specdec_profiler.eagle3) is not installed")
            if o.aa_shapes:
                missing.append(f"--method {o.method} with --aa-shapes: synthetic shapes hold no text to train on")
        if o.method == "mtp":
            from ..workload_profile import model_has_mtp

            if not model_has_mtp(o.target):
                missing.append(f"--method mtp: {o.target} has no built-in MTP head")
        try:
            cand, note = promote.candidate_config(o.method, o.draft, o.k) if o.method in promote.METHODS else (None, "")
        except UsageError as err:
            missing.append(str(err))
            cand, note = None, ""
        if o.served == "local":
            if importlib.util.find_spec("vllm") is None:
                missing.append("--served local: vLLM is not installed in this environment")
        else:
            import httpx

            for flag, url in (("--served", o.served), ("--candidate-url", o.candidate_url)):
                if not url:
                    missing.append(f"{flag}: the candidate needs its own endpoint (or --served local)")
                    continue
                try:
                    httpx.get(url.rstrip("/") + "/v1/models", timeout=5.0).raise_for_status()
                except httpx.HTTPError as err:
                    missing.append(f"{flag} {url}: not reachable ({type(err).__name__})")
        if missing:
            raise RedGate("prerequisites missing: " + "; ".join(missing))
        d = self.phase_dir(0)
        doc = {"experiment_id": self.exp.experiment_id, "target": o.target, "served": o.served, "method": o.method,
               "standing_config": o.standing_config, "candidate_config": cand, "candidate_note": note,
               "profile": o.profile, "aa_shapes": o.aa_shapes, "trigger": self.exp.trigger}
        (d / "experiment.json").write_text(json.dumps(doc, indent=1) + "\n")
        return PhaseRecord(status="done", gate="prerequisites present", outputs={"experiment": str(d / "experiment.json")})

    # ------------------------------------------------------------------ phase 1
    def p1_profile(self) -> PhaseRecord:
        o, d = self.o, self.phase_dir(1)
        prof = d / "workload-profile.json"
        if o.aa_shapes:
            self.command("profile", ["profile", "--aa-shapes", "--out", str(prof), "--model-config", o.target], d)
            doc = json.loads(prof.read_text())
            return PhaseRecord(status="done", gate="Artificial Analysis shapes (no traffic log)",
                               outputs={"profile": str(prof), "profile_sha256": sha256_file(prof)})
        red = d / "traffic.redacted.jsonl"
        self.command("profile", ["profile", "--in", o.profile, "--out", str(prof), "--tokenizer", o.target,
                                 "--model-config", o.target, "--write-redacted", str(red), "--no-progress"], d)
        doc = json.loads(prof.read_text())
        pv = doc["provenance"]
        n, skipped = doc["requests"], pv["lines_skipped"]
        if n < o.min_requests:
            raise RedGate(f"profile: {n} requests profiled, fewer than --min-requests {o.min_requests}")
        if skipped > pv["lines_total"] / 2:
            raise RedGate(f"profile: {skipped} of {pv['lines_total']} lines skipped ({pv['skipped_by_reason']})")
        self.state.last_profile_sha256 = pv["source_sha256"]
        rec = doc["recommended_spec_decode"]["method"]
        note = "" if rec == o.method else f"; the profile recommends {rec}, the loop runs --method {o.method}"
        return PhaseRecord(status="done", gate=f"{n} requests profiled, {skipped} lines skipped{note}",
                           outputs={"profile": str(prof), "redacted": str(red), "requests": n,
                                    "source_sha256": pv["source_sha256"], "recommended": rec,
                                    "content_class_mix": doc["content_class_mix"]})

    # ------------------------------------------------------------------ phase 2
    def p2_corpus(self) -> PhaseRecord:
        o = self.o
        if o.method in promote.NOTHING_TO_TRAIN or o.draft:
            why = f"nothing to train for {o.method}" if not o.draft else f"draft given: {o.draft}"
            return PhaseRecord(status="skipped", gate=why)
        d = self.phase_dir(2)
        corpus = d / "corpus.jsonl"
        self.command("corpus", ["corpus", "--profile", self.output(1, "profile"), "--traffic",
                                self.output(1, "redacted"), "--out", str(corpus), "--chat-template", o.target,
                                "--no-redact"], d)
        rep = json.loads(corpus.with_name(corpus.stem + ".report.json").read_text())
        if rep["rows"] < o.min_corpus_rows:
            raise RedGate(f"corpus: {rep['rows']} rows, fewer than --min-corpus-rows {o.min_corpus_rows} "
                          f"({rep['rejects']} failed the chat-template gate)")
        return PhaseRecord(status="done", gate=f"{rep['rows']} rows, {rep['rejects']} rejected by the chat-template gate",
                           outputs={"corpus": str(corpus), "rows": rep["rows"], "achieved_mix": rep["achieved_mix"]})

    # ------------------------------------------------------------------ phase 3
    def p3_train(self) -> PhaseRecord:
        o = self.o
        if o.method in promote.NOTHING_TO_TRAIN:
            return PhaseRecord(status="skipped", gate=f"nothing to train for {o.method}")
        if o.draft:
            return PhaseRecord(status="skipped", gate=f"draft given: {o.draft}", outputs={"draft": o.draft})
        d = self.phase_dir(3)
        out = d / "draft"
        self.command("train", ["train", "--backend", "local", "--method", o.method, "--corpus", self.output(2, "corpus"),
                               "--target", o.target, "--out", str(out), *o.train_args], d)
        cfg_path = out / "config.json"
        if not cfg_path.is_file():
            raise RedGate(f"train: no exported draft at {out} (config.json missing)")
        arch = (json.loads(cfg_path.read_text()).get("architectures") or ["?"])[0]
        if o.method == "eagle3" and arch != "LlamaForCausalLMEagle3":
            raise RedGate(f"train: exported architecture {arch}, vLLM's eagle3 needs LlamaForCausalLMEagle3")
        record = _training_record(out)
        return PhaseRecord(status="done", gate=f"trained and exported ({arch}); training gate passed",
                           outputs={"draft": str(out), "training": record})

    # ------------------------------------------------------------------ phase 4
    def p4_ab(self) -> PhaseRecord:
        o, d = self.o, self.phase_dir(4)
        draft = o.draft or (self.output(3, "draft") if "3" in self.exp.phases else None)
        cand, note = promote.candidate_config(o.method, draft, o.k)
        configs = {"standing": o.standing_config, "candidate": cand}
        osl = o.ab_max_tokens
        if o.aa_shapes:
            from ..aa import SHAPES

            shape = SHAPES["aa-1k"]
            isl = max(8, int(shape.input_tokens * o.aa_scale))
            convs = arms.synthetic_prompts(o.ab_requests + o.ab_burn_in, isl, o.seed)
            workload, dataset = f"aa-1k x{o.aa_scale}", "synthetic"
        else:
            prof = json.loads(Path(self.output(1, "profile")).read_text())
            osl = max(2, min(o.ab_max_tokens, int(prof["output_tokens"]["p50"] or o.ab_max_tokens)))
            convs = arms.replay_prompts(Path(self.output(1, "redacted")), o.ab_requests + o.ab_burn_in,
                                        o.ab_max_model_len - osl - 64, o.seed)
            if len(convs) < o.ab_requests + o.ab_burn_in:
                raise RedGate(f"A/B: only {len(convs)} traffic prompts fit --ab-max-model-len {o.ab_max_model_len} "
                              f"with {osl} output tokens; need {o.ab_requests + o.ab_burn_in}")
            workload, dataset = f"traffic {self.state.last_profile_sha256[:12]}", "traffic-replay"
            isl = None
        model = o.served_model_name or Path(o.target).name
        settings = {"model": model, "workload": workload, "dataset": dataset, "input_tokens": isl,
                    "output_tokens": osl, "output_length": "forced", "concurrency": o.ab_concurrency,
                    "requests": o.ab_requests, "temperature": 0.0, "top_p": 1.0, "driver": "specdec loop (builtin)"}
        burn, measured = convs[:o.ab_burn_in], convs[o.ab_burn_in:]
        self.log(f"A/B: {o.ab_trials} trials per arm (ABBA), {o.ab_requests} requests at concurrency "
                 f"{o.ab_concurrency}, {osl} output tokens; candidate: {note}")
        with arms.arm_endpoints(o.served, o.candidate_url, o.target, configs, d, o.ab_max_model_len, model) as eps:
            warmed = set()
            for trial, arm in arms.trial_order(o.ab_trials):
                if self.stop.is_set():
                    raise Interrupted("stopped during the A/B")
                url, name = eps[arm]
                if arm not in warmed and burn:
                    arms.run_trial(d / "burn-in", arm, 0, url, name, burn, {**settings, "requests": len(burn)},
                                   configs[arm])
                    warmed.add(arm)
                s = arms.run_trial(d, arm, trial, url, name, measured, settings, configs[arm])
                tp = (s["metrics"].get("tpot_ms") or {}).get("p50")
                al = s["spec_decode"].get("acceptance_length")
                self.log(f"A/B {arm} trial {trial}: TPOT p50 {tp if tp is None else round(tp, 2)} ms, "
                         f"acceptance length {al if al is None else round(al, 2)}, errors {s['errors']['count']}")
        from ..decide import decide

        verdict = decide(d / "standing", d / "candidate", min_gain=o.min_gain)
        (d / "verdict.json").write_text(verdict.model_dump_json(indent=1, by_alias=True) + "\n")
        if verdict.verdict == "DRAFT":
            raise RedGate(f"A/B: DRAFT verdict, not enough evidence to decide: {verdict.summary}")
        return PhaseRecord(status="done", gate=verdict.summary,
                           outputs={"verdict": verdict.verdict, "verdict_file": str(d / "verdict.json"),
                                    "candidate_config": cand, "candidate_note": note, "draft": draft})

    # ------------------------------------------------------------------ phase 5
    def p5_promote(self) -> PhaseRecord:
        o, st = self.o, self.state
        verdict = self.output(4, "verdict")
        vfile = json.loads(Path(self.output(4, "verdict_file")).read_text())
        st.last_ab_verdict = {"experiment_id": self.exp.experiment_id, "verdict": verdict, "summary": vfile.get("summary")}
        cand, draft = self.output(4, "candidate_config"), self.output(4, "draft")
        if verdict == "GO":
            st.standing_config = cand
            if draft:
                st.champion_draft = draft
            st.event("promoted", experiment_id=self.exp.experiment_id, config=cand, draft=draft)
            gate = f"the candidate is the new standing config: {vfile.get('summary')}"
        else:
            st.event("kept", experiment_id=self.exp.experiment_id, verdict=verdict, reason=vfile.get("summary"))
            gate = f"the standing config stays: {vfile.get('summary')}"
        rendered = promote.render(st.standing_config, o.target, st.champion_draft)
        self.exp.phases["5"] = PhaseRecord(status="done", gate=gate, outputs={"verdict": verdict, "serve": rendered})
        self.exp.finished = True
        paths = report.write(st, o)
        self.exp.phases["5"].outputs["report"] = {k: str(v) for k, v in paths.items()}
        return self.exp.phases["5"]


def _training_record(out: Path) -> dict | None:
    """The trainer's summary record, when it left one beside the draft (names vary by trainer version)."""
    for name in ("training_record.json", "training_summary.json", "training_log.json"):
        p = out / name
        if p.is_file():
            try:
                doc = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                keep = ("per_position_acc", "acc", "simulated_acc_len", "loss", "final_loss", "samples_seen", "steps")
                return {k: doc[k] for k in keep if k in doc} or {"file": str(p)}
    return None
