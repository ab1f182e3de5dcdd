"""Phase 5's publication: ``report.md``, ``report.json`` and ``ab.png`` in the experiment's evidence folder.

Written on every ending, a red gate included, so the reason a loop stopped is where the operator
looks first.
"""

from __future__ import annotations

import json
from pathlib import Path


def _fmt_cmp(c: dict | None, unit: str) -> str:
    if not c:
        return "n/a"
    lo, hi = c["relative_interval"]
    return (f"{c['baseline']:.3f} -> {c['candidate']:.3f}{unit} ({c['relative_change'] * 100:+.1f}%, "
            f"95% interval [{lo * 100:+.1f}%, {hi * 100:+.1f}%]){'' if c['passed'] else ': ' + c['note']}")


def write(state, opts) -> dict[str, Path]:
    exp = state.current
    ev = Path(exp.evidence_dir)
    verdict = None
    vpath = ev / "phase-4-ab" / "verdict.json"
    if vpath.is_file():
        verdict = json.loads(vpath.read_text())
    doc = {"experiment_id": exp.experiment_id, "trigger": exp.trigger, "method": exp.method, "target": state.target,
           "served_deploy": state.served_deploy, "phases": {k: v.model_dump() for k, v in exp.phases.items()},
           "verdict": verdict and {k: verdict.get(k) for k in ("verdict", "summary", "reasons", "acceptance_length",
                                                             "tpot_ms", "settings", "warnings")},
           "standing_config": state.standing_config, "champion_draft": state.champion_draft}
    paths = {"json": ev / "report.json", "markdown": ev / "report.md"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    lines = [f"# specdec loop: {exp.experiment_id}", "",
             f"- target: `{state.target}`, served: `{state.served_deploy}`, method: `{exp.method}`, trigger: {exp.trigger}",
             "", "| phase | status | gate |", "|---|---|---|"]
    from .phases import PHASES

    for k in sorted(exp.phases, key=int):
        r = exp.phases[k]
        lines.append(f"| {k} {PHASES[int(k)]} | {r.status} | {r.gate.replace('|', '/')} |")
    if verdict:
        s = verdict.get("settings") or {}
        lines += ["", f"## A/B verdict: **{verdict['verdict']}**", "", verdict["summary"], "",
                  f"- acceptance length: {_fmt_cmp(verdict.get('acceptance_length'), '')}",
                  f"- median TPOT: {_fmt_cmp(verdict.get('tpot_ms'), ' ms')}",
                  f"- load: {s.get('requests')} requests x {verdict['baseline']['n_trials']} trials per arm, "
                  f"concurrency {s.get('concurrency')}, {s.get('output_tokens')} output tokens forced, "
                  f"temperature {s.get('temperature')}, workload {s.get('workload')}"]
        if verdict.get("warnings"):
            lines += [f"- warning: {w}" for w in verdict["warnings"]]
    p4 = exp.phases.get("4")
    if p4 and p4.outputs.get("candidate_note"):
        lines += ["", f"Candidate: `{json.dumps(p4.outputs.get('candidate_config'))}` ({p4.outputs['candidate_note']})"]
    p5 = exp.phases.get("5")
    serve = p5.outputs.get("serve") if p5 else None
    if serve:
        lines += ["", "## Serve (the standing config after this experiment)", "", "```", serve["vllm"], serve["sglang"],
                  "```"]
    red = [r for r in exp.phases.values() if r.status == "red"]
    if red:
        lines += ["", f"**Stopped at a red gate:** {red[0].gate}"]
    if verdict and _plot(verdict, ev / "ab.png"):
        paths["plot"] = ev / "ab.png"
        lines += ["", "![A/B trials](ab.png)"]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths


def _plot(verdict: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, label in ((axes[0], "tpot_ms", "median TPOT per trial (ms)"),
                              (axes[1], "acceptance_length", "acceptance length per trial")):
        for x, arm in enumerate(("baseline", "candidate")):
            vals = [t[metric] for t in verdict[arm]["trials"] if t.get(metric) is not None]
            ax.scatter([x] * len(vals), vals, color=("tab:gray", "tab:blue")[x], zorder=3)
            if vals:
                ax.hlines(sum(vals) / len(vals), x - 0.2, x + 0.2, color="black")
        ax.set_xticks([0, 1], ["standing", "candidate"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"{verdict['verdict']}: {verdict['summary'][:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
