"""Trace-driven goodput simulation of speculative decoding policies on a measured latency table.

The question it answers: on *this* GPU's measured verify latencies, how many
output tokens per second does each K policy deliver at each batch size, when
requests differ in how predictable they are?

Model of the traffic (documented because every number depends on it):

- B request slots stay busy (a finished request is replaced at once). Each
  request has a length (uniform 64..512 output tokens) and a logit offset
  ``z ~ N(0, request_spread^2)``: some requests are easy (boilerplate,
  repetition), some hard.
- Output position s of a request has a difficulty ``eps_s ~ N(0, token_spread^2)``.
  A draft at depth i (0-based) for position s is accepted, given all drafts
  before it were, with probability
  ``q = sigmoid(logit(p_i) + z + eps_s)``, where ``p_i`` is the
  ``--per-position-accept`` value: the median request's conditional acceptance
  at depth i.
- The drafter reports a confidence per draft that is informative but
  miscalibrated: ``conf = sigmoid(logit(q) + overconfidence + noise)``
  (defaults: +1.0 logit over-confidence, noise N(0, 0.5^2)); policies see
  the cumulative product, like EAGLE's path probability.
- Common random numbers: every policy sees the same requests, the same
  per-position difficulties and the same acceptance draws (indexed by output
  position, not by step), so differences are the policies', not the dice's.
- Step time = L(B, B + sum K) from the measured table (linear interpolation
  between measured token counts, as the engine's latency model) + drafter cost
  ``draft_cost_ratio * L(B, B) * max K`` (a chain drafter runs as many
  sequential steps as the longest draft).

Policies: ``no_spec``; ``static_k1``..``static_k{K}``; ``batch_schedule`` (the
best fixed K per batch size in hindsight, K=0 allowed: what a perfectly tuned
``num_speculative_tokens_per_batch_size`` achieves); ``tilespec`` (the policy
core: calibration learned online from its own outcomes starting from the
identity prior, selector, fallback); ``oracle`` (the same selector given the
true acceptance probabilities: the ceiling of per-request K).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specdec_engine.policy import Calibration, FallbackConfig, KSelector, LatencyModel, RateTracker, TileSpecPolicy

DEFAULT_PER_POSITION_ACCEPT = (0.80, 0.76, 0.73, 0.70, 0.68, 0.66, 0.64, 0.62)


@dataclass
class SimConfig:
    per_position_accept: tuple = DEFAULT_PER_POSITION_ACCEPT
    draft_cost_ratio: float = 0.0
    steps: int = 2000
    seed: int = 0
    request_spread: float = 1.5
    token_spread: float = 1.0
    overconfidence: float = 1.0
    confidence_noise: float = 0.5
    min_len: int = 64
    max_len: int = 512

    @property
    def k_max(self) -> int:
        return len(self.per_position_accept)


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class _Trace:
    """Per-slot streams indexed by global output position (requests concatenated)."""

    u: np.ndarray        # [B, S] acceptance draws
    eps: np.ndarray      # [B, S] position difficulty
    noise: np.ndarray    # [B, S, K] confidence noise per (position, depth)
    z: np.ndarray        # [B, S] logit offset of the request owning each position
    end: np.ndarray      # [B, S] end position (exclusive) of that request


def make_trace(cfg: SimConfig, batch: int) -> _Trace:
    rng = np.random.default_rng([cfg.seed, batch])
    S = cfg.steps * (cfg.k_max + 1) + cfg.max_len + cfg.k_max + 2
    z = np.empty((batch, S))
    end = np.empty((batch, S), dtype=np.int64)
    for b in range(batch):
        pos = 0
        while pos < S:
            length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
            zr = rng.normal(0.0, cfg.request_spread)
            z[b, pos:pos + length] = zr
            end[b, pos:pos + length] = pos + length
            pos += length
    return _Trace(
        u=rng.random((batch, S)),
        eps=rng.normal(0.0, cfg.token_spread, (batch, S)),
        noise=rng.normal(0.0, cfg.confidence_noise, (batch, S, cfg.k_max)),
        z=z, end=end)


@dataclass
class PolicyResult:
    policy: str
    batch: int
    tokens: int = 0
    time_ms: float = 0.0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    k_sum: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_ms * 1000.0 if self.time_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"batch": self.batch, "policy": self.policy, "tokens_per_s": round(self.tokens_per_s, 3),
                "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
                "mean_k": round(self.k_sum / (self.steps * self.batch), 3) if self.steps else 0.0,
                "tokens_per_step": round(self.tokens / self.steps, 3) if self.steps else 0.0, **self.extra}


def simulate_policy(name: str, latency: LatencyModel, cfg: SimConfig, batch: int, trace: _Trace,
                    choose, learn=None) -> PolicyResult:
    """Run ``cfg.steps`` steps; ``choose(true_cum_q, raw_cum_conf, n_avail) -> k`` decides each step."""
    K = cfg.k_max
    logit_p = _logit(np.asarray(cfg.per_position_accept))[None, :]
    rows = np.arange(batch)[:, None]
    depth = np.arange(K)[None, :]
    pos = np.zeros(batch, dtype=np.int64)
    res = PolicyResult(name, batch)
    base_lat = latency.curve(batch, batch * (K + 1) + 1)
    draft_unit = cfg.draft_cost_ratio * float(base_lat[batch])
    for _ in range(cfg.steps):
        end = trace.end[np.arange(batch), pos]
        n_avail = np.minimum(K, end - pos - 1)
        idx = pos[:, None] + depth + 0  # draft at depth i predicts position pos + i
        logit_q = logit_p + trace.z[rows, idx] + trace.eps[rows, idx]
        q = _sigmoid(logit_q)
        conf = _sigmoid(logit_q + cfg.overconfidence + trace.noise[rows, idx, depth])
        avail = depth < n_avail[:, None]
        true_cum = np.where(avail, np.cumprod(q, axis=1), np.nan)
        raw_cum = np.where(avail, np.cumprod(conf, axis=1), np.nan)
        k = np.minimum(np.asarray(choose(true_cum, raw_cum, n_avail), dtype=np.int64), n_avail)
        ok = trace.u[rows, idx] < q
        run = np.cumprod(ok, axis=1).sum(axis=1)  # leading accepts
        acc = np.minimum(run, k)
        if learn is not None:
            learn(raw_cum, k, acc)
        n_tok = batch + int(k.sum())
        step_ms = float(base_lat[n_tok]) + draft_unit * int(k.max(initial=0))
        res.time_ms += step_ms
        res.tokens += int(acc.sum()) + batch
        res.drafted += int(k.sum())
        res.accepted += int(acc.sum())
        res.k_sum += int(k.sum())
        res.steps += 1
        pos = pos + acc + 1
    return res


def run_batch(latency: LatencyModel, cfg: SimConfig, batch: int,
              fallback: FallbackConfig | None = None) -> list[PolicyResult]:
    K = cfg.k_max
    trace = make_trace(cfg, batch)
    out = [simulate_policy("no_spec", latency, cfg, batch, trace, lambda q, c, n: np.zeros(batch, np.int64))]
    for k in range(1, K + 1):
        out.append(simulate_policy(f"static_k{k}", latency, cfg, batch, trace,
                                   lambda q, c, n, k=k: np.full(batch, k, np.int64)))
    best = max(out, key=lambda r: r.tokens_per_s)
    sched = PolicyResult("batch_schedule", batch, best.tokens, best.time_ms, best.drafted, best.accepted,
                         best.steps, best.k_sum, {"chosen": best.policy})
    out.append(sched)
    cost = None
    if cfg.draft_cost_ratio > 0:
        unit = cfg.draft_cost_ratio * float(latency.predict(batch, batch))
        cost = [unit * k for k in range(K + 1)]
    policy = TileSpecPolicy(latency, K, calibration=Calibration(n_positions=K), fallback=fallback,
                            draft_cost_ms=cost if cost else 0.0)
    out.append(simulate_policy("tilespec", latency, cfg, batch, trace,
                               lambda q, c, n: policy.plan(c, n).k, policy.learn))
    out[-1].extra = {"calibration_ece": policy.calibration.summary()["ece_prequential"],
                     "fallback_transitions": policy.fallback.transitions}
    oracle = KSelector(latency, K, draft_cost_ms=cost if cost else 0.0)
    rates = RateTracker()

    def oracle_choose(q, c, n):
        sel = oracle.select(q, n, rate=rates.rate(batch))
        rates.update(batch, sel)
        return sel.k

    out.append(simulate_policy("oracle", latency, cfg, batch, trace, oracle_choose))
    return out


def run(latency: LatencyModel, cfg: SimConfig, batches: list[int] | None = None, progress=None) -> list[PolicyResult]:
    batches = batches or sorted({int(b) for b in latency.batch_sizes})
    results = []
    for b in batches:
        results.extend(run_batch(latency, cfg, b))
        if progress:
            progress(b)
    return results


def summarize(results: list[PolicyResult]) -> list[dict]:
    """Per batch size: tilespec vs the best baseline (no_spec, static K, batch_schedule) and vs the oracle."""
    rows = []
    for b in sorted({r.batch for r in results}):
        rs = {r.policy: r for r in results if r.batch == b}
        baselines = {n: r for n, r in rs.items() if n == "no_spec" or n.startswith("static_k") or n == "batch_schedule"}
        best_name = max(baselines, key=lambda n: baselines[n].tokens_per_s)
        if best_name == "batch_schedule":
            best_name = rs["batch_schedule"].extra["chosen"]
        best = baselines[best_name].tokens_per_s
        ts = rs["tilespec"].tokens_per_s
        rows.append({"batch": b, "best_baseline": best_name, "best_baseline_tokens_per_s": round(best, 3),
                     "tilespec_tokens_per_s": round(ts, 3),
                     "tilespec_vs_best_baseline": round(ts / best, 4),
                     "tilespec_vs_oracle": round(ts / rs["oracle"].tokens_per_s, 4),
                     "tilespec_vs_no_spec": round(ts / rs["no_spec"].tokens_per_s, 4)})
    return rows
