"""Writes recorded_batches.json: a deterministic trace of decode rounds, as SGLang's controller sees them.

Each round: the running batch size, and for each request how many leading drafts of a 7-step EAGLE chain
the target accepted (``would_accept``; a round that drafts s steps accepts min(would_accept, s), exact for
a greedy chain). Four phases: small batches with good drafts, large batches, drafts that stop matching
(the fallback must switch speculation off), good drafts again (probe, then back on).

    python tests/sglang/data/make_recorded_batches.py      # rewrites the file (same bytes every time)
"""

import json
from pathlib import Path

import numpy as np

K_MAX = 7
PHASES = [  # (rounds, batch sizes, per-position conditional acceptance)
    (150, [1, 2, 3, 4, 6, 8, 12, 16], 0.8),
    (120, [20, 24, 32, 40, 48, 64], 0.7),
    (260, [2, 4, 6, 8, 12, 16], 0.02),
    (220, [1, 2, 3, 4, 6, 8], 0.85),
]


def main() -> None:
    rng = np.random.default_rng(20260522)
    rounds = []
    for n, sizes, p in PHASES:
        for _ in range(n):
            b = int(rng.choice(sizes))
            ok = rng.random((b, K_MAX)) < p
            would = np.where(ok.all(axis=1), K_MAX, np.argmin(ok, axis=1))
            rounds.append({"batch_size": b, "would_accept": [int(x) for x in would]})
    out = {"k_max": K_MAX, "phases": [{"rounds": n, "batch_sizes": s, "acceptance": p} for n, s, p in PHASES],
           "rounds": rounds}
    path = Path(__file__).with_name("recorded_batches.json")
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"{path}: {len(rounds)} rounds")


if __name__ == "__main__":
    main()
