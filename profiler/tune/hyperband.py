"""Hyperband brackets (Li et al., 2018) with rungs measured in training samples consumed.

``s_max = floor(log_eta(R / r))`` for a full budget ``R`` (``max_samples``) and smallest rung ``r``
(``min_samples``). Bracket ``s`` (``s_max`` down to 0) starts ``n = ceil((s_max + 1) / (s + 1) * eta**s)``
configurations at ``R * eta**-s`` samples; rung ``i`` runs ``floor(n * eta**-i)`` of them to
``R * eta**(i - s)`` samples. Between rungs, successive halving keeps the best ``floor(n_i / eta)`` (at least
one) by the proxy and kills the bottom ``1 - 1/eta``; the last rung of every bracket is the full budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    n_configs: int
    samples: int


@dataclass(frozen=True)
class Bracket:
    s: int
    rungs: tuple[Rung, ...]

    @property
    def n_configs(self) -> int:
        return self.rungs[0].n_configs

    def samples_spent(self) -> int:
        """Samples consumed when every rung runs its configs (training resumes between rungs)."""
        total, prev = 0, 0
        for i, rung in enumerate(self.rungs):
            total += rung.n_configs * (rung.samples - prev)
            prev = rung.samples
        return total


def s_max(max_samples: int, min_samples: int, eta: int) -> int:
    return int(math.floor(math.log(max_samples / min_samples) / math.log(eta) + 1e-9))


def plan(max_samples: int, min_samples: int, eta: int) -> list[Bracket]:
    if not (max_samples >= min_samples >= 1 and eta >= 2):
        raise ValueError(f"hyperband needs max_samples >= min_samples >= 1 and eta >= 2 "
                         f"(got {max_samples}, {min_samples}, {eta})")
    top = s_max(max_samples, min_samples, eta)
    brackets = []
    for s in range(top, -1, -1):
        n = int(math.ceil((top + 1) / (s + 1) * eta ** s - 1e-9))
        rungs = []
        for i in range(s + 1):
            n_i = max(1, int(math.floor(n * eta ** (-i) + 1e-9)))
            r_i = int(round(max_samples * eta ** (i - s)))
            rungs.append(Rung(n_i, r_i))
        brackets.append(Bracket(s, tuple(rungs)))
    return brackets


def keep_top(scores: dict[str, float], k: int) -> tuple[list[str], list[str]]:
    """(survivors, killed): the ``k`` best by score (ties broken by id, so the cut is deterministic)."""
    order = sorted(scores, key=lambda t: (-scores[t], t))
    k = max(1, min(k, len(order)))
    return order[:k], order[k:]


def n_keep(n: int, eta: int) -> int:
    """Successive halving's survivors of a rung of ``n``: the top ``floor(n / eta)``, at least one."""
    return max(1, n // eta)


def render(brackets: list[Bracket], eta: int) -> str:
    lines = [f"hyperband: eta={eta}, {len(brackets)} bracket(s); rung = n configs x samples each (cumulative)"]
    total = 0
    for b in brackets:
        cells = "  ".join(f"{r.n_configs} x {r.samples}" for r in b.rungs)
        spent = b.samples_spent()
        total += spent
        lines.append(f"  bracket s={b.s}: {cells}   ({spent} samples)")
    lines.append(f"  total samples if run to the end: {total}")
    return "\n".join(lines)
