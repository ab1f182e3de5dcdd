"""The search: hyperband / grid / random (built in) and tpe (optuna), then promotion and the verdict.

Every rung read and every measurement goes to the ledger first thing after it happens; before doing any
work the engine looks it up there, so a resumed tune repeats nothing that finished. The configurations
are a deterministic function of (space, strategy, seed), so a resumed tune regenerates the same trials.

Promotion: the ``promote`` best trials by the proxy at the full budget, plus the baseline (``--seed-from``
or the space's ``baseline``, trained to the full budget the same way), are served and measured. The
champion is the best by the objective of record only. When it does not beat the baseline's measurement by
more than ``noise``, the verdict is ``no-improvement`` and the baseline stays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from . import hyperband as hb
from . import space as sp
from .ledger import Ledger
from .runner import TrainRecord, TrialRunner

STRATEGIES = ("hyperband", "grid", "random", "tpe")


@dataclass
class Trial:
    id: str
    config: dict
    bracket: int | None = None
    rungs: list[int] = field(default_factory=list)   # the samples at which it is read (cumulative)
    prunable: bool = False                           # only hyperband cuts between rungs


def geometric_rungs(space: sp.Space) -> list[int]:
    """Rung reads of a non-hyperband trial: min_samples * eta**k below max_samples, then max_samples."""
    b = space.budget
    out, r = [], space.min_samples
    while r < b.max_samples:
        out.append(int(r))
        r *= b.eta
    return out + [b.max_samples]


def hyperband_trials(space: sp.Space, seed: int, base: dict) -> list[tuple[hb.Bracket, list[Trial]]]:
    plan = hb.plan(space.budget.max_samples, space.min_samples, space.budget.eta)
    out = []
    for br in plan:
        rng = random.Random(f"{seed}:hyperband:{br.s}")
        trials = []
        for j in range(br.n_configs):
            cfg = sp.sample(space, rng, base)
            trials.append(Trial(f"hb-s{br.s}-{j:03d}-{sp.config_id(cfg)}", cfg, br.s,
                                [r.samples for r in br.rungs], True))
        out.append((br, trials))
    return out


def flat_trials(space: sp.Space, strategy: str, seed: int, base: dict,
                n_trials: int | None) -> tuple[list[Trial], list[dict]]:
    rungs = geometric_rungs(space)
    if strategy == "grid":
        ok, bad = sp.grid(space, base)
        return [Trial(f"grid-{i:03d}-{sp.config_id(c)}", c, None, rungs) for i, c in enumerate(ok)], bad
    rng = random.Random(f"{seed}:random")
    n = n_trials or space.n_trials
    trials = []
    for i in range(n):
        c = sp.sample(space, rng, base)
        trials.append(Trial(f"random-{i:03d}-{sp.config_id(c)}", c, None, rungs))
    return trials, []


class Tuner:
    def __init__(self, space: sp.Space, strategy: str, runner: TrialRunner | None, ledger: Ledger | None,
                 workdir: Path, seed: int = 0, seed_from: dict | None = None, n_trials: int | None = None,
                 log=print):
        if strategy not in STRATEGIES:
            raise UsageError(f"--strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
        self.space, self.strategy, self.runner, self.ledger = space, strategy, runner, ledger
        self.workdir, self.seed, self.n_trials, self.log = Path(workdir), seed, n_trials, log
        self.base = sp.baseline_config(space, seed_from)
        if not sp.feasible(space, self.base):
            raise UsageError(f"baseline {self.base} does not map onto {space.hardware.gpus} GPU(s) with "
                             f"max_per_device_batch {space.hardware.max_per_device_batch}")
        self.proxy_final: dict[str, float] = {}
        self.configs: dict[str, dict] = {}

    # ------------------------------------------------------------------ helpers
    def launcher_config(self, cfg: dict) -> dict:
        per, acc = sp.mapping_for(self.space, cfg)
        return {**cfg, "per_device_batch": per, "accumulation": acc, "gpus": self.space.hardware.gpus,
                "total_samples": self.space.budget.max_samples}

    def header(self) -> dict:
        return {"type": "header", "schema": "specdec_tune_ledger_v1", "strategy": self.strategy,
                "seed": self.seed, "space_sha256": sp.space_sha256(self.space), "baseline": self.base,
                "runner": getattr(self.runner, "name", None)}

    def _check_header(self) -> None:
        h = self.ledger.header()
        want = self.header()
        if h is None:
            self.ledger.append(want)
            return
        for k in ("strategy", "seed", "space_sha256", "baseline", "runner"):
            if h.get(k) != want.get(k):
                raise UsageError(f"{self.ledger.path}: belongs to another tune ({k}: {h.get(k)!r} there, "
                                 f"{want.get(k)!r} now); use a new --ledger")
        self.log(f"resuming from {self.ledger.path} ({len(self.ledger.records)} records)")

    def read_rung(self, trial: Trial, i: int) -> float:
        samples = trial.rungs[i]
        self.configs[trial.id] = trial.config
        done = self.ledger.rung(trial.id, samples)
        if done is not None:
            return float(done["proxy"])
        rec: TrainRecord = self.runner.train(self.launcher_config(trial.config), samples,
                                             self.workdir / "trials" / trial.id, resume=i > 0)
        self.ledger.append({"type": "rung", "trial": trial.id, "strategy": self.strategy,
                            "bracket": trial.bracket, "rung": i, "samples": samples, "config": trial.config,
                            "proxy": rec.proxy, "record": rec.to_dict()})
        self.log(f"  {trial.id}: {samples} samples -> proxy {rec.proxy:.4f}")
        return rec.proxy

    def run_trial_flat(self, trial: Trial) -> float:
        val = None
        for i in range(len(trial.rungs)):
            val = self.read_rung(trial, i)
        self.proxy_final[trial.id] = val
        return val

    # ------------------------------------------------------------------ strategies
    def run_hyperband(self) -> None:
        for br, trials in hyperband_trials(self.space, self.seed, self.base):
            self.log(f"bracket s={br.s}: {br.n_configs} configs")
            alive = trials
            for i, rung in enumerate(br.rungs):
                scores = {t.id: self.read_rung(t, i) for t in alive}
                if i + 1 == len(br.rungs):
                    self.proxy_final.update(scores)
                    break
                keep, killed = hb.keep_top(scores, br.rungs[i + 1].n_configs)
                for tid in killed:
                    if not self.ledger.has("kill", trial=tid):
                        self.ledger.append({"type": "kill", "trial": tid, "bracket": br.s, "rung": i,
                                            "samples": rung.samples, "proxy": scores[tid]})
                alive = [t for t in alive if t.id in keep]

    def run_flat(self) -> None:
        trials, bad = flat_trials(self.space, self.strategy, self.seed, self.base, self.n_trials)
        if bad:
            self.log(f"{len(bad)} grid point(s) skipped: their global batch does not map onto the GPUs")
        for t in trials:
            self.run_trial_flat(t)

    def run_tpe(self) -> None:
        try:
            import optuna
        except ImportError:
            raise UsageError("--strategy tpe needs optuna (pip install optuna); hyperband, grid and random "
                             "are built in") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rungs = geometric_rungs(self.space)
        b = self.space.budget
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=self.seed),
                                    pruner=optuna.pruners.HyperbandPruner(min_resource=self.space.min_samples,
                                                                          max_resource=b.max_samples,
                                                                          reduction_factor=b.eta))
        dists = {}
        for k, s in self.space.specs().items():
            if s.values is not None:
                vals = [int(v) if k in sp.INT_PARAMS else float(v) for v in s.values]
                dists[k] = optuna.distributions.CategoricalDistribution(vals)
            else:
                dists[k] = optuna.distributions.FloatDistribution(s.low, s.high, log=s.log)
        # replay the ledger: finished trials go in as history, an unfinished one is continued first
        n_total = self.n_trials or self.space.n_trials
        seen: dict[str, dict] = {}
        for r in self.ledger.records:
            if r.get("type") == "rung" and r["trial"].startswith("tpe-"):
                seen.setdefault(r["trial"], {"config": r["config"], "reads": {}})["reads"][r["samples"]] = r["proxy"]
        for tid, info in seen.items():
            reads = info["reads"]
            params = {k: info["config"][k] for k in dists}
            pruned = self.ledger.has("kill", trial=tid)
            if b.max_samples in reads or pruned:
                state = optuna.trial.TrialState.COMPLETE if b.max_samples in reads else optuna.trial.TrialState.PRUNED
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, state=state,
                    value=reads.get(b.max_samples) if state == optuna.trial.TrialState.COMPLETE else None,
                    intermediate_values={int(s): v for s, v in reads.items()}))
                self.configs[tid] = info["config"]
                if b.max_samples in reads:
                    self.proxy_final[tid] = reads[b.max_samples]
            else:
                study.enqueue_trial(params)

        while len(study.trials) < n_total:
            trial = study.ask(dists)
            cfg = sp.complete(self.space, dict(trial.params), self.base)
            t = Trial(f"tpe-{sp.config_id(cfg)}", cfg, None, rungs, True)
            if not sp.feasible(self.space, cfg):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            value, pruned = None, False
            for i, samples in enumerate(rungs):
                value = self.read_rung(t, i)
                trial.report(value, samples)
                if samples < b.max_samples and trial.should_prune():
                    pruned = True
                    if not self.ledger.has("kill", trial=t.id):
                        self.ledger.append({"type": "kill", "trial": t.id, "bracket": None, "rung": i,
                                            "samples": samples, "proxy": value})
                    break
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
                self.proxy_final[t.id] = value

    # ------------------------------------------------------------------ promotion and verdict
    def measure(self, tid: str, cfg: dict) -> float:
        done = self.ledger.measure(tid)
        if done is not None:
            return float(done["objective"])
        last = self.ledger.rung(tid, self.space.budget.max_samples)
        export_dir = last["record"].get("export_dir") if last else None
        if not export_dir:
            raise UsageError(f"trial {tid}: no export directory in its last training record; cannot measure")
        obj = float(self.runner.measure(export_dir))
        self.ledger.append({"type": "measure", "trial": tid, "config": cfg, "export_dir": export_dir,
                            "objective": obj})
        self.log(f"  measured {tid}: acceptance length {obj:.4f}")
        return obj

    def promote_and_decide(self) -> dict:
        b = self.space.budget
        base = Trial(f"baseline-{sp.config_id(self.base)}", self.base, None, geometric_rungs(self.space))
        base_proxy = self.run_trial_flat(base)
        ranked = sorted((t for t in self.proxy_final if t != base.id),
                        key=lambda t: (-self.proxy_final[t], t))
        promoted = ranked[: self.space.promote]
        self.log(f"promoting {len(promoted)} by proxy at {b.max_samples} samples, plus the baseline")
        objectives = {tid: self.measure(tid, self.configs[tid]) for tid in promoted}
        base_obj = self.measure(base.id, self.base)
        best = max(objectives, key=lambda t: (objectives[t], -promoted.index(t))) if objectives else None
        noise = self.space.noise
        if best is not None and objectives[best] - base_obj > noise:
            verdict, champ, champ_obj = "improvement", best, objectives[best]
        else:
            verdict, champ, champ_obj = "no-improvement", base.id, base_obj
        ties = [t for t in objectives if t != champ and abs(objectives[t] - champ_obj) <= noise]
        result = {
            "type": "result", "strategy": self.strategy, "verdict": verdict, "noise": noise,
            "champion": {"trial": champ, "config": self.configs.get(champ, self.base), "objective": champ_obj,
                         "launcher": self.launcher_config(self.configs.get(champ, self.base))},
            "baseline": {"trial": base.id, "config": self.base, "objective": base_obj, "proxy": base_proxy},
            "promoted": [{"trial": t, "config": self.configs[t], "proxy": self.proxy_final[t],
                          "objective": objectives[t]} for t in promoted],
            "ties_within_noise": ties,
            "trials_read": len({r["trial"] for r in self.ledger.records if r.get("type") == "rung"}),
        }
        return result

    def run(self) -> dict:
        self._check_header()
        if self.strategy == "hyperband":
            self.run_hyperband()
        elif self.strategy == "tpe":
            self.run_tpe()
        else:
            self.run_flat()
        result = self.promote_and_decide()
        prev = [r for r in self.ledger.records if r.get("type") == "result"]
        if not prev or {k: v for k, v in prev[-1].items() if k != "time"} != result:
            self.ledger.append(result)
        return result


# ---------------------------------------------------------------------- dry run
def dry_run_text(space: sp.Space, strategy: str, seed: int, seed_from: dict | None, n_trials: int | None) -> str:
    base = sp.baseline_config(space, seed_from)
    hw, b = space.hardware, space.budget
    lines = [f"specdec tune --dry-run: strategy {strategy}, seed {seed}; {hw.gpus} GPU(s), max per-device "
             f"batch {hw.max_per_device_batch}; full trial {b.max_samples} samples, smallest rung "
             f"{space.min_samples}, eta {b.eta}; nothing is trained or measured"]

    def row(tid: str, cfg: dict) -> str:
        try:
            per, acc = sp.mapping_for(space, cfg)
            m = f"{per} per device x {hw.gpus} GPU(s) x {acc} accumulation"
        except UsageError as err:
            m = f"INFEASIBLE: {err}"
        knobs = ", ".join(f"{k}={cfg[k]:.3g}" if isinstance(cfg[k], float) else f"{k}={cfg[k]}" for k in cfg)
        return f"    {tid}: {knobs} -> {m}"

    if strategy == "hyperband":
        pairs = hyperband_trials(space, seed, base)
        lines.append(hb.render([br for br, _ in pairs], b.eta))
        for br, trials in pairs:
            lines.append(f"  bracket s={br.s} configs:")
            lines += [row(t.id, t.config) for t in trials]
    elif strategy in ("grid", "random"):
        trials, bad = flat_trials(space, strategy, seed, base, n_trials)
        rungs = geometric_rungs(space)
        lines.append(f"{strategy}: {len(trials)} config(s), each read at {rungs} samples "
                     f"({len(trials) * b.max_samples} samples in all)")
        lines += [row(t.id, t.config) for t in trials]
        lines += [row("skipped", c) for c in bad]
    else:
        lines.append(f"tpe (optuna TPESampler seed {seed} + HyperbandPruner(min_resource={space.min_samples}, "
                     f"max_resource={b.max_samples}, reduction_factor={b.eta})): {n_trials or space.n_trials} "
                     f"trials proposed one by one, read at {geometric_rungs(space)} samples; configs are not "
                     "known before the run")
        try:
            import optuna  # noqa: F401
        except ImportError:
            lines.append("  note: optuna is not installed; --strategy tpe would stop with a message")
    lines.append(f"  baseline (always trained to {b.max_samples} and measured):")
    lines.append(row(f"baseline-{sp.config_id(base)}", base))
    lines.append(f"promotion: top {space.promote} by proxy at {b.max_samples} samples + baseline are measured "
                 f"in serving; champion on the objective only; a margin <= {space.noise} is no improvement")
    return "\n".join(lines) + "\n"


__all__ = ["Tuner", "dry_run_text", "STRATEGIES", "geometric_rungs", "hyperband_trials"]
