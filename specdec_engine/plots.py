"""The three cache plots (TileSpec guide): latency model, calibration curve, token coverage.

matplotlib is imported lazily with the Agg backend so that a headless engine
never needs a display, and a missing matplotlib only costs the plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .policy.calibration import Calibration
from .policy.latency_model import LatencyModel


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_latency_model(model: LatencyModel, out: str | Path, title: str | None = None) -> None:
    """Raw samples grey, median per token count blue, fitted segments dashed, boundaries red."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    s = model.samples
    ax.scatter(s[:, 1], s[:, 2], s=10, color="0.6", alpha=0.6, label="raw samples", zorder=1)
    n = model.token_counts
    uniq = np.unique(n)
    med = np.array([np.median(model.latencies_ms[n == u]) for u in uniq])
    ax.plot(uniq, med, "o-", color="tab:blue", ms=3, lw=1.2, label="median per token count", zorder=3)
    grid = np.linspace(uniq.min(), uniq.max(), 600)
    # the segments are fitted with attention's per-sequence cost removed (as if B=1); draw them with that
    # cost added back at the median batch size measured at each token count, comparable with the medians
    med_b = np.array([np.median(model.batch_sizes[n == u]) for u in uniq])
    fitted = model.segments(grid) + model.batch_slope * (np.interp(grid, uniq, med_b) - 1)
    seg_label = "fitted segments" if model.batch_slope == 0 else \
        f"fitted segments (+{model.batch_slope * 1000:.1f} us per sequence at the median B)"
    ax.plot(grid, fitted, "--", color="black", lw=1.2, label=seg_label, zorder=4)
    for i, b in enumerate(model.segments.jump_boundaries):
        ax.axvline(b, color="red", ls=":", lw=1.2, label="tile boundary" if i == 0 else None, zorder=2)
    batches = sorted({int(b) for b in model.batch_sizes})
    if 1 < len(batches) <= 12:
        cmap = plt.get_cmap("viridis")
        for j, b in enumerate(batches):
            sel = model.batch_sizes == b
            order = np.argsort(model.token_counts[sel])
            ax.plot(model.token_counts[sel][order], model.latencies_ms[sel][order], "-", lw=0.8, alpha=0.7,
                    color=cmap(j / max(1, len(batches) - 1)), label=f"B={b}")
    ax.set_xlabel("tokens in the verify forward (N)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title or f"Verify latency: {len(model.latencies_ms)} points, MAPE {model.mape():.2f}%, "
                          f"segments {model.segment_mape():.2f}%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_calibration(cal: Calibration, out: str | Path, title: str | None = None) -> None:
    """Reliability diagram: observed acceptance per score bin vs the calibrated map and the diagonal."""
    plt = _plt()
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(7, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="raw confidence (diagonal)")
    xs = np.linspace(0, 1, 201)
    cmap = plt.get_cmap("viridis")
    n_pos = cal.n_positions
    big = max(cal.counts.max(), 1)
    for pos in range(n_pos):
        seen = cal.counts[pos] > 0
        obs = np.where(seen, cal.accepted[pos] / np.maximum(cal.counts[pos], 1e-12), np.nan)
        mean_score = np.where(seen, cal.score_sums[pos] / np.maximum(cal.counts[pos], 1e-12), np.nan)
        color = "tab:blue" if n_pos == 1 else cmap(pos / max(1, n_pos - 1))
        label = "" if n_pos == 1 else f" (draft position {pos + 1})"
        ax.scatter(mean_score[seen], obs[seen], s=10 + 90 * cal.counts[pos][seen] / big, color=color, alpha=0.7,
                   zorder=3, label="observed acceptance per bin" + label if pos in (0, n_pos - 1) else None)
        ax.plot(xs, cal(xs, np.full(xs.shape, pos)), "-", color=color, lw=2 if n_pos == 1 else 1.2,
                label="calibrated P(accept)" + label if pos in (0, n_pos - 1) else None)
    summ = cal.summary()
    ax.set_ylabel("P(accept)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"Calibration: {summ['n_pairs']} pairs, ECE {summ['ece']} "
                          f"(raw {summ['ece_raw']}, prequential {summ['ece_prequential']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    axh.bar(cal.centers, cal.counts.sum(axis=0), width=cal.bin_edges[1] - cal.bin_edges[0], color="0.6")
    axh.set_xlabel("draft confidence score")
    axh.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_token_distribution(model: LatencyModel, out: str | Path, histogram: dict | None = None) -> None:
    """Samples per token count (coverage of the profile), optionally with served traffic beside it."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    n = model.samples[:, 1].astype(int)
    uniq, counts = np.unique(n, return_counts=True)
    width = max(1.0, (uniq.max() - uniq.min()) / 250) if len(uniq) > 1 else 1.0
    ax.bar(uniq, counts, width=width, color="tab:blue", label="profile samples")
    if histogram:
        xs = np.array(sorted(int(k) for k in histogram))
        ys = np.array([histogram[k] if k in histogram else histogram[str(k)] for k in xs], dtype=float)
        ax2 = ax.twinx()
        ax2.plot(xs, ys, ".", color="tab:orange", ms=3, label="served steps")
        ax2.set_ylabel("served steps")
    ax.set_xlabel("tokens in the verify forward (N)")
    ax.set_ylabel("samples")
    ax.set_title(f"Token-count coverage: {len(n)} samples over {len(uniq)} token counts")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
