"""Traffic drift between two workload profiles: one number in [0, 1] and a threshold.

    drift = 0.5 * TV(content_class_mix) + 0.25 * TV(isl_buckets) + 0.25 * TV(osl_buckets)

TV is the total-variation distance between two discrete distributions, ``0.5 * sum |p_i - q_i|``
over the union of their keys (0 = identical, 1 = disjoint). The class mix gets half the weight
because it decides what the draft was trained on (code vs chat vs rewrite); the input and output
length buckets share the other half (they decide the benchmark shapes and the context the draft
sees). Both profiles use the same fixed bucket edges, so buckets compare by label.

The default threshold, 0.15, is a move of 30 points of traffic from one class to another with the
lengths unchanged, or a complete change of the length profile with the mix unchanged, i.e.
well above the noise of re-profiling the same traffic: two disjoint halves of one generated log
of 200 requests differ by less than 0.06 (see tests/tools/test_loop.py).
"""

from __future__ import annotations

DEFAULT_THRESHOLD = 0.15
WEIGHTS = {"content_class_mix": 0.5, "isl_buckets": 0.25, "osl_buckets": 0.25}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def _buckets(profile: dict, name: str) -> dict[str, float]:
    return {b["label"]: float(b["share"]) for b in profile.get(name) or []}


def drift(reference: dict, current: dict) -> dict:
    """Per-part distances and the weighted total (profiles as loaded JSON dicts)."""
    parts = {
        "content_class_mix": total_variation(reference.get("content_class_mix") or {},
                                             current.get("content_class_mix") or {}),
        "isl_buckets": total_variation(_buckets(reference, "isl_buckets"), _buckets(current, "isl_buckets")),
        "osl_buckets": total_variation(_buckets(reference, "osl_buckets"), _buckets(current, "osl_buckets")),
    }
    return {"drift": sum(WEIGHTS[k] * v for k, v in parts.items()), "parts": parts, "weights": WEIGHTS}
