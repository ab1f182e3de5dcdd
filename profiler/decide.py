"""`specdec decide`: the A/B gate. GO only on a measured win in acceptance length AND in TPOT.

    specdec decide --baseline runs_a/aa-1k --candidate runs_b/aa-1k [--out verdict.json] [--min-gain 1%]

    from specdec_profiler.decide import decide
    v = decide("runs_a/aa-1k", "runs_b/aa-1k")     # -> Verdict (pydantic); v.verdict: GO | NO-GO | DRAFT

Input: each arm's directory holds one trial summary per trial, in the ``specdec_trial_summary_v1``
schema (``TrialSummary`` below; ``schemas/trial-summary.schema.json``). Both ``<dir>/summary*.json``
(flat: ``summary-trial0.json``, ...) and ``<dir>/*/summary.json`` (one folder per trial, as
``specdec aa --trial N`` writes under ``<out>/<shape>/trial-N/``) are read, together; nothing deeper.
``write_e2e_trials`` writes ``benchmarks/vllm_e2e.py``'s rows in the same schema.

Per trial, two numbers and nothing else (metric-isolated): the median TPOT over the trial's requests
(``metrics.tpot_ms.p50``) and the acceptance length over the trial's ``/metrics`` window
(``1 + accepted_tokens / drafts``, from the counters when the summary has them, else the stored
``spec_decode.acceptance_length``; 1.0 when the window saw no drafts: every forward gave one token).

Statistic: for each metric, a Welch t interval (default 95%) on the difference of the arms' means of
those per-trial numbers, candidate minus baseline, with Welch-Satterthwaite degrees of freedom; it is
shown relative to the baseline's mean. Welch because the arms' trial-to-trial spreads need not be
equal (a candidate that switches speculation off and on is noisier), t rather than a bootstrap
because with 3-5 trials a bootstrap's resamples are too few to give an interval at all honestly.
Trials are treated as independent (unpaired), which is conservative for interleaved (ABBA) runs.
t quantiles come from scipy when installed, else from the incomplete beta function below.

Verdict: GO when the candidate's acceptance length is higher with the interval above 0 AND its TPOT
is lower with the interval below 0, and both point estimates improve by at least ``--min-gain``
(default 0). Otherwise NO-GO, naming the failed condition. DRAFT, whatever the numbers, when either
arm has fewer than ``--min-trials`` (3) usable trials, or a setting differs between any two trials
(every key of ``settings`` except ``endpoint``, which two deployments rarely share; ``--match-endpoint``
compares it too); a DRAFT still carries the numbers and the outcome they would give (``provisional``).

Output: the verdict JSON (``schemas/decide-verdict.schema.json``) on stdout, or in ``--out FILE``;
one human line on stderr. Exit code 0 GO, 1 NO-GO, 3 DRAFT, 2 bad input (``specdec: error: ...``,
naming the file and the field).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, ValidationError

from .errors import UsageError

TRIAL_SCHEMA_ID = "specdec_trial_summary_v1"
VERDICT_SCHEMA_ID = "specdec_decide_verdict_v1"
DEFAULT_IGNORED_SETTINGS = ("endpoint",)
EXIT_CODES = {"GO": 0, "NO-GO": 1, "DRAFT": 3}
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


# ---------------------------------------------------------------------------- the trial summary schema
class _Open(BaseModel):
    """Unknown keys are kept (writers add context); NaN and infinity are refused."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True, protected_namespaces=())


class TrialSettings(_Open):
    """What the load was. Must be equal in every trial of both arms (keys beyond these are compared too),
    except the ignored keys (by default ``endpoint``)."""

    endpoint: str | None = Field(None, description="base URL measured (not compared by default)")
    model: str = Field(description="served model name or model folder")
    workload: str = Field(description="shape or workload name, e.g. aa-1k or code_edit")
    dataset: str | None = Field(None, description="where prompts came from: synthetic, dataset-replay, ...")
    input_tokens: int | None = Field(None, ge=1, description="target prompt tokens (ISL); null: the workload's own")
    output_tokens: int = Field(ge=1, description="output tokens per request (OSL)")
    output_length: Literal["forced", "cap"] = Field(
        description="forced: min_tokens = max_tokens and ignore_eos; cap: max_tokens only")
    concurrency: int = Field(ge=1, description="requests in flight")
    requests: int = Field(ge=1, description="measured requests per trial")
    temperature: float = Field(ge=0)
    top_p: float | None = Field(None, gt=0, le=1, description="null: not sent (the server's default)")
    driver: str = Field(description="load generator: builtin, aiperf, specdec_profiler.loadgen")


class TpotStat(_Open):
    """Time per output token over the trial's requests, from the server's token counts (not chunks)."""

    p50: PositiveFloat | None = Field(description="median TPOT over the trial's requests, ms: the gate's number")
    mean: NonNegativeFloat | None = None
    p90: NonNegativeFloat | None = None
    p99: NonNegativeFloat | None = None


class TrialMetrics(_Open):
    """The trial's request-level results; the gate reads ``tpot_ms.p50`` only."""

    tpot_ms: TpotStat | None = Field(description="null when no request completed")
    requests: NonNegativeInt | None = Field(None, description="requests sent in the measured pass")
    ok: NonNegativeInt | None = Field(None, description="requests that completed")


class SpecDecodeWindow(_Open):
    """vLLM's spec-decode counters over the measured pass alone (scraped before and after it)."""

    acceptance_length: float | None = Field(None, ge=1, description="1 + accepted_tokens / drafts")
    drafts: NonNegativeInt | None = None
    draft_tokens: NonNegativeInt | None = None
    accepted_tokens: NonNegativeInt | None = None
    metrics_available: bool = Field(True, description="false: /metrics could not be read; acceptance unknown")


class TrialSummary(_Open):
    """One trial of one arm: ``summary.json`` as ``specdec aa`` and ``write_e2e_trials`` write it.

    ``specdec decide`` reads an arm's directory as ``DIR/summary*.json`` plus ``DIR/*/summary.json``.
    Per trial it uses ``metrics.tpot_ms.p50`` (median TPOT) and the acceptance length from
    ``spec_decode`` (1 + accepted_tokens / drafts), and requires ``settings`` to match across trials."""

    schema_id: Literal["specdec_trial_summary_v1"] = Field(alias="schema")
    trial: NonNegativeInt | None = Field(None, description="trial index within the arm")
    label: str | None = Field(None, description="the arm's name, e.g. tilespec (informational)")
    settings: TrialSettings
    metrics: TrialMetrics
    spec_decode: SpecDecodeWindow
    context: dict[str, Any] | None = Field(None, description="free-form: hardware, engine, versions, date")


# ---------------------------------------------------------------------------- the verdict
class TrialPoint(BaseModel):
    file: str
    trial: int | None
    label: str | None
    tpot_ms: float | None = Field(description="the trial's median TPOT")
    acceptance_length: float | None
    acceptance_source: Literal["counters", "field", "no_drafts"] | None
    failed_requests: int | None
    usable: bool
    problem: str | None = None


class MetricSummary(BaseModel):
    n: int
    mean: float
    median: float
    sd: float | None = Field(description="sample standard deviation over trials; null for one trial")
    min: float
    max: float
    values: list[float]


class ArmSummary(BaseModel):
    dir: str | None
    n_trials: int
    n_usable: int
    labels: list[str]
    trials: list[TrialPoint]
    tpot_ms: MetricSummary | None
    acceptance_length: MetricSummary | None


class Comparison(BaseModel):
    """Candidate minus baseline for one metric, on the means of the per-trial numbers."""

    metric: Literal["acceptance_length", "tpot_ms"]
    better: Literal["higher", "lower"]
    baseline: float = Field(description="baseline mean of the per-trial numbers")
    candidate: float
    difference: float = Field(description="candidate - baseline")
    interval: tuple[float, float] = Field(description="Welch t interval of the difference")
    relative_change: float = Field(description="difference / baseline")
    relative_interval: tuple[float, float]
    se: float
    df: float = Field(description="Welch-Satterthwaite degrees of freedom")
    t_critical: float
    beyond_noise: bool = Field(description="the interval excludes 0 on the better side")
    worse: bool = Field(description="the interval excludes 0 on the worse side")
    meets_min_gain: bool
    passed: bool
    note: str = Field(description="why it did not pass: includes 0 | worse | below --min-gain X; empty when passed")


class SettingsMismatch(BaseModel):
    key: str
    baseline: list[Any]
    candidate: list[Any]


class Method(BaseModel):
    statistic: Literal["welch_t"] = "welch_t"
    description: str
    confidence: float
    min_gain: float
    min_trials: int
    ignored_settings: list[str]
    t_quantiles: str


class Verdict(BaseModel):
    """The A/B gate's answer: ``specdec decide`` prints it; ``specdec loop`` phase 4 reads it."""

    model_config = ConfigDict(populate_by_name=True, json_schema_serialization_defaults_required=True)

    schema_id: Literal["specdec_decide_verdict_v1"] = Field(VERDICT_SCHEMA_ID, alias="schema")
    verdict: Literal["GO", "NO-GO", "DRAFT"]
    exit_code: int = Field(description="0 GO, 1 NO-GO, 3 DRAFT")
    summary: str = Field(description="the human line")
    reasons: list[str] = Field(description="the conditions met (GO), failed (NO-GO), or why DRAFT")
    provisional: Literal["GO", "NO-GO"] | None = Field(
        None, description="DRAFT only: what the numbers say, had the evidence been complete")
    acceptance_length: Comparison | None
    tpot_ms: Comparison | None
    baseline: ArmSummary
    candidate: ArmSummary
    settings: dict[str, Any] = Field(description="the baseline's first trial's settings")
    settings_mismatch: list[SettingsMismatch]
    warnings: list[str]
    method: Method
    decided_at: str


# ---------------------------------------------------------------------------- t quantiles
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Student t quantile: scipy's when installed, else ``t_ppf_builtin``."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return t_ppf_builtin(p, df)
    return float(student_t.ppf(p, df))


def t_ppf_builtin(p: float, df: float) -> float:
    """Student t quantile by bisection on ``t_cdf`` (to ~1e-12 relative); any real df > 0."""
    if p < 0.5:
        return -t_ppf_builtin(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _t_source() -> str:
    try:
        import scipy  # noqa: F401

        return "scipy.stats.t"
    except ImportError:
        return "built-in (regularized incomplete beta, bisection)"


def welch_interval(baseline: Sequence[float], candidate: Sequence[float], confidence: float = 0.95):
    """(difference of means candidate - baseline, (lo, hi), se, df, t) at ``confidence``, two-sided.

    Needs two or more values per arm. With no spread in either arm the interval is the point itself.
    """
    nb, nc = len(baseline), len(candidate)
    if nb < 2 or nc < 2:
        raise ValueError("a Welch interval needs at least 2 values per arm")
    diff = statistics.fmean(candidate) - statistics.fmean(baseline)
    vb, vc = statistics.variance(baseline) / nb, statistics.variance(candidate) / nc
    se = math.sqrt(vb + vc)
    if se == 0.0:
        df = float(nb + nc - 2)
    else:
        df = (vb + vc) ** 2 / (vb ** 2 / (nb - 1) + vc ** 2 / (nc - 1))
    t = t_ppf(0.5 + confidence / 2.0, df)
    return diff, (diff - t * se, diff + t * se), se, df, t


# ---------------------------------------------------------------------------- reading the arms
def find_summaries(directory: str | Path, arm: str = "arm") -> list[Path]:
    """``<dir>/summary*.json`` and ``<dir>/*/summary.json``, sorted; a clear error when there are none."""
    d = Path(directory)
    if not d.exists():
        raise UsageError(f"--{arm} {d}: no such directory")
    if not d.is_dir():
        raise UsageError(f"--{arm} {d}: not a directory")
    files = sorted({p for p in d.glob("summary*.json") if p.is_file()} | {p for p in d.glob("*/summary.json")
                                                                           if p.is_file()})
    if not files:
        raise UsageError(f"--{arm} {d}: no trial summaries (looked for {d}/summary*.json and {d}/*/summary.json; "
                         f"`specdec aa --trial N --out OUT` writes OUT/<shape>/trial-N/summary.json: pass OUT/<shape>)")
    return files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a trial summary (the top level must be a JSON object)")
    return data


def _validation_message(path: Path | str, err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    got = "" if first["type"] == "missing" else f" (got {json.dumps(first.get('input'), default=str)[:80]})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{path}: field '{loc}': {first['msg']}{got}{more}; see schemas/trial-summary.schema.json"


def load_summaries(paths: Sequence[Path]) -> list[tuple[str, TrialSummary]]:
    """Read and validate; every file must carry the same ``schema`` and that must be one this reads."""
    raw = [(p, _read_json(p)) for p in paths]
    versions: dict[str, list[str]] = {}
    for p, data in raw:
        versions.setdefault(str(data.get("schema", "(none)")), []).append(str(p))
    if len(versions) > 1:
        parts = [f"{v} ({', '.join(fs[:3])}{', ...' if len(fs) > 3 else ''})" for v, fs in sorted(versions.items())]
        raise UsageError(f"mixed schema versions: {'; '.join(parts)}; every trial summary of both arms must be "
                         f"{TRIAL_SCHEMA_ID}")
    out = []
    for p, data in raw:
        if "schema" not in data:
            raise UsageError(f"{p}: field 'schema': missing (expected \"{TRIAL_SCHEMA_ID}\"; summaries written "
                             f"before it existed need `specdec aa` to run again)")
        if data["schema"] != TRIAL_SCHEMA_ID:
            raise UsageError(f"{p}: field 'schema': {json.dumps(data['schema'])[:60]} is not supported; this "
                             f"specdec reads {TRIAL_SCHEMA_ID}")
        try:
            out.append((str(p), TrialSummary.model_validate(data)))
        except ValidationError as err:
            raise UsageError(_validation_message(p, err)) from None
    return out


def trial_acceptance_length(sd: SpecDecodeWindow) -> tuple[float | None, str | None]:
    """(acceptance length, where from): counters, else the stored field, else 1.0 when no drafts ran."""
    if sd.drafts and sd.accepted_tokens is not None:
        return 1.0 + sd.accepted_tokens / sd.drafts, "counters"
    if sd.acceptance_length is not None:
        return sd.acceptance_length, "field"
    if sd.metrics_available and (sd.drafts == 0 or (sd.drafts is None and sd.draft_tokens == 0)):
        return 1.0, "no_drafts"
    return None, None


def _point(file: str, s: TrialSummary) -> TrialPoint:
    tpot = s.metrics.tpot_ms.p50 if s.metrics.tpot_ms is not None else None
    al, source = trial_acceptance_length(s.spec_decode)
    problems = []
    if tpot is None:
        problems.append("no median TPOT (metrics.tpot_ms.p50 is null: no request completed?)")
    if al is None:
        problems.append("no acceptance length (spec_decode has no drafts/accepted counters"
                        + (": /metrics was not readable)" if not s.spec_decode.metrics_available else ")"))
    m = s.metrics
    failed = m.requests - m.ok if m.requests is not None and m.ok is not None else None
    return TrialPoint(file=file, trial=s.trial, label=s.label, tpot_ms=tpot, acceptance_length=al,
                      acceptance_source=source, failed_requests=failed, usable=not problems,
                      problem="; ".join(problems) or None)


def _metric_summary(values: list[float]) -> MetricSummary | None:
    if not values:
        return None
    return MetricSummary(n=len(values), mean=statistics.fmean(values), median=statistics.median(values),
                         sd=statistics.stdev(values) if len(values) > 1 else None, min=min(values), max=max(values),
                         values=values)


def _arm(directory: str | None, trials: list[tuple[str, TrialSummary]]) -> ArmSummary:
    points = sorted((_point(f, s) for f, s in trials), key=lambda p: (p.trial is None, p.trial or 0, p.file))
    usable = [p for p in points if p.usable]
    return ArmSummary(dir=directory, n_trials=len(points), n_usable=len(usable),
                      labels=sorted({p.label for p in points if p.label}), trials=points,
                      tpot_ms=_metric_summary([p.tpot_ms for p in usable]),
                      acceptance_length=_metric_summary([p.acceptance_length for p in usable]))


# ---------------------------------------------------------------------------- the decision
_ABSENT = "(absent)"


def _settings_mismatch(b: list[TrialSummary], c: list[TrialSummary], ignored: set[str]) -> list[SettingsMismatch]:
    dumps = [[s.settings.model_dump() for s in arm] for arm in (b, c)]
    keys = sorted({k for arm in dumps for d in arm for k in d} - ignored)
    out = []
    for key in keys:
        per_arm = []
        for arm in dumps:
            seen: dict[str, Any] = {}
            for d in arm:
                v = d.get(key, _ABSENT)
                seen.setdefault(json.dumps(v, sort_keys=True, default=str), v)
            per_arm.append(seen)
        if len(per_arm[0].keys() | per_arm[1].keys()) > 1:
            out.append(SettingsMismatch(key=key, baseline=list(per_arm[0].values()),
                                        candidate=list(per_arm[1].values())))
    return out


def _fmt_values(vals: list[Any]) -> str:
    return " | ".join(str(v) for v in vals)


def _compare(metric, better, b: list[float], c: list[float], confidence: float, min_gain: float) -> Comparison:
    diff, (lo, hi), se, df, t = welch_interval(b, c, confidence)
    base = statistics.fmean(b)
    rel, rlo, rhi = diff / base, lo / base, hi / base
    if better == "higher":
        beyond, worse, gain = lo > 0, hi < 0, rel
    else:
        beyond, worse, gain = hi < 0, lo > 0, -rel
    meets = gain > 0 and gain >= min_gain
    passed = beyond and meets
    note = "" if passed else "worse" if worse else "includes 0" if not beyond else f"below --min-gain {min_gain:.1%}"
    return Comparison(metric=metric, better=better, baseline=base, candidate=statistics.fmean(c), difference=diff,
                      interval=(lo, hi), relative_change=rel, relative_interval=(rlo, rhi), se=se, df=df,
                      t_critical=t, beyond_noise=beyond, worse=worse, meets_min_gain=meets, passed=passed, note=note)


def _describe(cmp: Comparison, confidence: float, digits: int, unit: str = "") -> str:
    name = "acceptance" if cmp.metric == "acceptance_length" else "TPOT"
    lo, hi = cmp.relative_interval
    note = f" {cmp.note}" if cmp.note else ""
    return (f"{name} {cmp.baseline:.{digits}f} -> {cmp.candidate:.{digits}f}{unit} ({cmp.relative_change:+.1%}, "
            f"{confidence * 100:g}% CI [{lo:+.1%}, {hi:+.1%}]{note})")


def _condition(cmp: Comparison, confidence: float) -> str:
    name, way = ("acceptance length", "higher") if cmp.metric == "acceptance_length" else ("TPOT", "lower")
    lo, hi = cmp.relative_interval
    ci = f"{confidence * 100:g}% CI [{lo:+.1%}, {hi:+.1%}]"
    if cmp.passed:
        return f"{name} {way} beyond the noise: {cmp.relative_change:+.1%}, {ci} excludes 0"
    if cmp.note == "worse":
        return f"{name} worse: {cmp.relative_change:+.1%}, {ci} excludes 0"
    if cmp.note == "includes 0":
        return f"{name} not {way} beyond the noise: {cmp.relative_change:+.1%}, {ci} includes 0"
    return f"{name} {way} beyond the noise ({cmp.relative_change:+.1%}, {ci}) but {cmp.note}"


def decide_summaries(baseline: Sequence[tuple[str, TrialSummary] | TrialSummary | dict],
                     candidate: Sequence[tuple[str, TrialSummary] | TrialSummary | dict], *,
                     min_trials: int = 3, confidence: float = 0.95, min_gain: float = 0.0,
                     ignore_settings: Sequence[str] = DEFAULT_IGNORED_SETTINGS,
                     baseline_dir: str | None = None, candidate_dir: str | None = None) -> Verdict:
    """The gate on trial summaries already in memory (``(file, summary)`` pairs, summaries or dicts)."""
    if min_trials < 2:
        raise UsageError(f"--min-trials must be >= 2 (an interval needs a spread), got {min_trials}")
    if not 0.5 <= confidence < 1.0:
        raise UsageError(f"--confidence must be in [0.5, 1), got {confidence}")
    if not 0.0 <= min_gain < 1.0:
        raise UsageError(f"--min-gain must be a fraction in [0, 1) (0.01 or 1%), got {min_gain}")

    def norm(arm, name):
        out = []
        for i, item in enumerate(arm):
            f, s = item if isinstance(item, tuple) else (f"{name}[{i}]", item)
            if not isinstance(s, TrialSummary):
                try:
                    s = TrialSummary.model_validate(s)
                except ValidationError as err:
                    raise UsageError(_validation_message(f, err)) from None
            out.append((f, s))
        return out

    b, c = norm(baseline, "baseline"), norm(candidate, "candidate")
    arms = {"baseline": _arm(baseline_dir, b), "candidate": _arm(candidate_dir, c)}
    ignored = set(ignore_settings)
    mismatch = _settings_mismatch([s for _, s in b], [s for _, s in c], ignored)

    draft, warnings = [], []
    for name, arm in arms.items():
        if arm.n_usable < min_trials:
            bad = [f"{p.file}: {p.problem}" for p in arm.trials if not p.usable]
            draft.append(f"{name} has {arm.n_usable} usable trial{'s' if arm.n_usable != 1 else ''} "
                         f"(< {min_trials})" + (f" [{'; '.join(bad)}]" if bad else ""))
        for p in arm.trials:
            if p.failed_requests:
                warnings.append(f"{name} {p.file}: {p.failed_requests} failed request(s); its TPOT is over the rest")
        no_drafts = [p for p in arm.trials if p.acceptance_source == "no_drafts"]
        if no_drafts:
            warnings.append(f"{name}: {len(no_drafts)} trial(s) saw no spec-decode drafts in their /metrics window: "
                            f"acceptance length taken as 1.0 (no speculation); if that arm speculates, its server "
                            f"does not export vLLM's spec_decode counters")
        seen: dict[int, str] = {}
        for p in arm.trials:
            if p.trial is not None and p.trial in seen:
                warnings.append(f"{name}: trial {p.trial} appears twice ({seen[p.trial]}, {p.file})")
            elif p.trial is not None:
                seen[p.trial] = p.file
    if mismatch:
        draft.append("settings differ: " + ", ".join(
            f"{m.key} (baseline {_fmt_values(m.baseline)}, candidate {_fmt_values(m.candidate)})" for m in mismatch))
    for key in sorted(ignored):
        vals = {json.dumps(s.settings.model_dump().get(key), default=str) for _, s in b + c}
        if len(vals) > 1:
            hint = " (--match-endpoint compares it)" if key == "endpoint" else ""
            warnings.append(f"settings.{key} differs between trials and is not compared{hint}: "
                            f"{', '.join(sorted(vals))}")

    acc = tpot = None
    nb_u, nc_u = arms["baseline"].n_usable, arms["candidate"].n_usable
    if nb_u >= 2 and nc_u >= 2:
        bt = [p for p in arms["baseline"].trials if p.usable]
        ct = [p for p in arms["candidate"].trials if p.usable]
        acc = _compare("acceptance_length", "higher", [p.acceptance_length for p in bt],
                       [p.acceptance_length for p in ct], confidence, min_gain)
        tpot = _compare("tpot_ms", "lower", [p.tpot_ms for p in bt], [p.tpot_ms for p in ct], confidence, min_gain)
    outcome = None if acc is None else "GO" if acc.passed and tpot.passed else "NO-GO"

    numbers = ""
    if acc is not None:
        numbers = (f"{_describe(acc, confidence, 2)}; {_describe(tpot, confidence, 2, ' ms')}; "
                   f"{nb_u} vs {nc_u} trials")
    else:
        parts = []
        for label, key, unit in (("acceptance", "acceptance_length", ""), ("TPOT", "tpot_ms", " ms")):
            bm, cm = getattr(arms["baseline"], key), getattr(arms["candidate"], key)
            if bm and cm:
                parts.append(f"{label} {bm.mean:.2f} -> {cm.mean:.2f}{unit} (no interval: too few trials)")
        numbers = "; ".join(parts + [f"{nb_u} vs {nc_u} trials"])

    if draft:
        verdict, reasons = "DRAFT", draft
        line = f"DRAFT: {'; '.join(draft)}. " + (f"Provisional {outcome}: {numbers}" if outcome else numbers)
    else:
        verdict = outcome
        reasons = [_condition(acc, confidence), _condition(tpot, confidence)]
        if verdict == "NO-GO":
            reasons = [r for r, cmp in zip(reasons, (acc, tpot)) if not cmp.passed]
        line = f"{verdict}: {numbers}"
    first = (b + c)[0][1].settings.model_dump()
    return Verdict(verdict=verdict, exit_code=EXIT_CODES[verdict], summary=line, reasons=reasons,
                   provisional=outcome if verdict == "DRAFT" else None, acceptance_length=acc, tpot_ms=tpot,
                   baseline=arms["baseline"], candidate=arms["candidate"], settings=first,
                   settings_mismatch=mismatch, warnings=warnings,
                   method=Method(description=(
                       "per trial: median TPOT over its requests and acceptance length 1 + accepted/drafts over "
                       "its /metrics window; per metric: Welch t interval on the difference of the arms' means "
                       "of the per-trial numbers (candidate - baseline), relative to the baseline's mean; GO "
                       "needs acceptance higher and TPOT lower, each interval excluding 0 and each point "
                       "estimate improving by at least min_gain"), confidence=confidence, min_gain=min_gain,
                       min_trials=min_trials, ignored_settings=sorted(ignored), t_quantiles=_t_source()),
                   decided_at=dt.datetime.now(dt.timezone.utc).isoformat())


def decide(baseline_dir: str | Path, candidate_dir: str | Path, *, min_trials: int = 3, confidence: float = 0.95,
           min_gain: float = 0.0, ignore_settings: Sequence[str] = DEFAULT_IGNORED_SETTINGS) -> Verdict:
    """The A/B gate on two directories of trial summaries. Bad input raises ``UsageError`` naming the file."""
    bd, cd = Path(baseline_dir), Path(candidate_dir)
    bp, cp = find_summaries(bd, "baseline"), find_summaries(cd, "candidate")
    if bd.resolve() == cd.resolve():
        raise UsageError(f"--baseline and --candidate are the same directory ({bd})")
    loaded = load_summaries(bp + cp)
    return decide_summaries(loaded[:len(bp)], loaded[len(bp):], min_trials=min_trials, confidence=confidence,
                            min_gain=min_gain, ignore_settings=ignore_settings, baseline_dir=str(bd),
                            candidate_dir=str(cd))


# ---------------------------------------------------------------------------- writers
def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trial_summary_from_e2e(row: dict, context: dict) -> TrialSummary:
    """One ``benchmarks/vllm_e2e.py`` result row (one arm, workload, concurrency, trial) as a trial summary."""
    wl = row["workload"]
    failed = sum((row.get("errors") or {}).values())
    settings = TrialSettings(endpoint=None, model=str(context.get("model_name") or context.get("model")), workload=wl,
                             dataset="specdec_profiler.workloads", input_tokens=None, output_tokens=context["osl"],
                             output_length="forced", concurrency=row["concurrency"], requests=row["requests"],
                             temperature=context["workloads"][wl]["temperature"], top_p=None,
                             driver="specdec_profiler.loadgen")
    tpot = row.get("tpot_ms_p50")
    metrics = TrialMetrics(tpot_ms=TpotStat(p50=tpot) if tpot else None, requests=row["requests"],
                           ok=row["requests"] - failed, output_tokens_per_s=row.get("output_tokens_per_s"),
                           ttft_ms_p50=row.get("ttft_ms_p50"), e2e_ms_p50=row.get("e2e_ms_p50"))
    al, dtoks = row.get("acceptance_length"), row.get("draft_tokens")
    spec = SpecDecodeWindow(acceptance_length=al, draft_tokens=None if dtoks is None else int(dtoks),
                            metrics_available=al is not None or dtoks is not None)
    keep = ("model", "hardware", "engine", "engine_version", "dtype", "enforce_eager", "max_model_len", "date", "host")
    ctx = {k: context.get(k) for k in keep if k in context}
    ctx.update(source="benchmarks/vllm_e2e.py", arm=row["arm"], pair=row.get("pair"),
               speculative_config=(context.get("arms") or {}).get(row["arm"]),
               **{k: row[k] for k in ("mean_k", "spec_off_step_share") if k in row})
    return TrialSummary(schema=TRIAL_SCHEMA_ID, trial=row["trial"], label=row["arm"], settings=settings,
                        metrics=metrics, spec_decode=spec, context=ctx)


def write_e2e_trials(root: str | Path, rows: Sequence[dict], context: dict) -> list[Path]:
    """Write every e2e row as ``<root>/<workload>_c<C>/pair-<pair>/<arm>/summary-trial<i>.json``.

    Rows of one pair were measured in alternation (same time window), so compare inside one pair folder:
    ``specdec decide --baseline <root>/code_edit_c4/pair-ngram_k4/ngram_k4
    --candidate <root>/code_edit_c4/pair-ngram_k4/tilespec``. Rows with no ``pair`` go to ``<workload>_c<C>/<arm>/``.
    With several fresh server pairs per arm (``--pairs``) each has its own folder, ``pair-<pair>-<n>`` (from 1).
    """
    paths = []
    for row in rows:
        d = Path(root) / f"{row['workload']}_c{row['concurrency']}"
        if row.get("pair"):
            d = d / (f"pair-{row['pair']}" + (f"-{row['server_pair'] + 1}" if "server_pair" in row else ""))
        path = d / row["arm"] / f"summary-trial{row['trial']}.json"
        s = trial_summary_from_e2e(row, context)
        _write_atomic(path, s.model_dump_json(indent=1, by_alias=True) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- JSON Schema export
SCHEMA_FILES = {"trial-summary.schema.json": (TrialSummary, "validation", TRIAL_SCHEMA_ID),
                "decide-verdict.schema.json": (Verdict, "serialization", VERDICT_SCHEMA_ID)}


def schema_documents() -> dict[str, dict]:
    """The JSON Schemas of the trial summary and the verdict, as committed under ``schemas/``."""
    out = {}
    for name, (model, mode, ident) in SCHEMA_FILES.items():
        doc = model.model_json_schema(by_alias=True, mode=mode)
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": ident, **doc}
    return out


def export_schemas(out_dir: str | Path = SCHEMA_DIR) -> list[Path]:
    paths = []
    for name, doc in schema_documents().items():
        path = Path(out_dir) / name
        _write_atomic(path, json.dumps(doc, indent=2) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- CLI
def parse_gain(text: str) -> float:
    """``1%`` or ``0.01`` -> 0.01."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"--min-gain {text!r}: not a number (write 1% or 0.01)") from None
    if not t.endswith("%") and value >= 1.0:
        raise UsageError(f"--min-gain {text}: a fraction must be < 1 (for one percent write 1% or 0.01)")
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--min-gain {text}: must be in [0%, 100%)")
    return value


def decide_command(args) -> int:
    ignored = [k for k in DEFAULT_IGNORED_SETTINGS if not (args.match_endpoint and k == "endpoint")]
    v = decide(args.baseline, args.candidate, min_trials=args.min_trials, confidence=args.confidence,
               min_gain=parse_gain(args.min_gain), ignore_settings=ignored + list(args.ignore_setting or []))
    text = v.model_dump_json(indent=1, by_alias=True) + "\n"
    if args.out:
        _write_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    print(v.summary, file=sys.stderr)
    for w in v.warnings:
        print(f"specdec decide: warning: {w}", file=sys.stderr)
    return v.exit_code


def add_parser(sub) -> None:
    p = sub.add_parser(
        "decide", help="the A/B gate: GO only when the candidate wins on acceptance length AND TPOT",
        description="Compare two arms' trial summaries (one summary.json per trial, specdec_trial_summary_v1; "
                    "read from DIR/summary*.json and DIR/*/summary.json). GO when the candidate's acceptance "
                    "length is higher and its median TPOT lower, each beyond a Welch t interval on the trials; "
                    "NO-GO otherwise; DRAFT with fewer than --min-trials trials per arm or differing settings. "
                    "Verdict JSON on stdout (or --out), one human line on stderr. "
                    "Exit 0 GO, 1 NO-GO, 3 DRAFT, 2 bad input.")
    p.add_argument("--baseline", required=True, metavar="DIR", help="the arm in service now (champion)")
    p.add_argument("--candidate", required=True, metavar="DIR", help="the arm that would replace it")
    p.add_argument("--out", metavar="FILE", help="write the verdict JSON here instead of stdout")
    p.add_argument("--min-trials", type=int, default=3, help="usable trials needed per arm (default 3; below: DRAFT)")
    p.add_argument("--confidence", type=float, default=0.95, help="two-sided interval level (default 0.95)")
    p.add_argument("--min-gain", default="0", metavar="GAIN",
                   help="smallest improvement that counts, on both metrics: 1%% or 0.01 (default 0)")
    p.add_argument("--ignore-setting", action="append", metavar="KEY",
                   help="a settings key not to compare (repeatable); endpoint is never compared unless "
                        "--match-endpoint")
    p.add_argument("--match-endpoint", action="store_true", help="require the same endpoint URL in both arms")
    p.set_defaults(func=decide_command)


def _main(argv: list[str] | None = None) -> int:
    """``python -m specdec_profiler.decide export-schemas [DIR]`` | ``from-e2e RESULTS.json OUT_DIR``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export-schemas"] and len(argv) <= 2:
        for path in export_schemas(*argv[1:2]):
            print(path)
        return 0
    if argv[:1] == ["from-e2e"] and len(argv) == 3:
        data = json.loads(Path(argv[1]).read_text())
        paths = write_e2e_trials(argv[2], data["results"], data["context"])
        print(f"wrote {len(paths)} trial summaries under {argv[2]}")
        return 0
    print(_main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main())
