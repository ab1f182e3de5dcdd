"""`specdec tiles`: fit TileSpec latency tiles from measured CSVs (profile/calibrate/show: tiles_profile.py).

``specdec tiles fit --csv FILE --tokens-col COL --latency-col COL [--batch-col COL] --out DIR``
reads measured verify latencies, fits the latency model (measured table +
piecewise-linear segments with jump detection), and writes
``latency_model.npz``, ``meta.json`` and ``plots/latency_model.png`` (+ the
token-coverage plot) into DIR. The last stdout line is JSON with at least
``boundaries``, ``n_points`` and ``mape``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from specdec_engine.policy.latency_model import DEFAULT_JUMP_THRESHOLD, LatencyModel, LatencyModelError

from .errors import UsageError


def read_latency_csv(path: str | Path, tokens_col: str, latency_col: str,
                     batch_col: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch, tokens, latency_ms) from a CSV; every problem is a UsageError naming file, line and column."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        f = p.open(newline="")
    except OSError as err:
        raise UsageError(f"{p}: cannot read ({err.strerror})") from None
    with f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise UsageError(f"{p}: empty CSV (no header row)")
        cols = [c.strip() for c in reader.fieldnames]
        reader.fieldnames = cols
        for role, col in (("--tokens-col", tokens_col), ("--latency-col", latency_col), ("--batch-col", batch_col)):
            if col is not None and col not in cols:
                raise UsageError(f"{p}: column {col!r} ({role}) not found; columns are: {', '.join(cols)}")
        b, n, lat = [], [], []
        for row in reader:
            line = reader.line_num

            def num(col: str, kind: str) -> float:
                raw = (row.get(col) or "").strip()
                if raw == "":
                    raise UsageError(f"{p}:{line}: column {col!r} is empty")
                try:
                    v = float(raw)
                except ValueError:
                    raise UsageError(f"{p}:{line}: column {col!r} is not a number: {raw!r}") from None
                if math.isnan(v) or math.isinf(v):
                    raise UsageError(f"{p}:{line}: column {col!r} is {raw} (NaN/inf)")
                if kind == "latency" and v <= 0:
                    raise UsageError(f"{p}:{line}: column {col!r} must be a positive latency, got {raw}")
                if kind == "count" and (v < 1 or v != int(v)):
                    raise UsageError(f"{p}:{line}: column {col!r} must be a positive integer, got {raw}")
                return v

            n.append(num(tokens_col, "count"))
            lat.append(num(latency_col, "latency"))
            b.append(num(batch_col, "count") if batch_col else 1.0)
    if not lat:
        raise UsageError(f"{p}: no data rows")
    tokens = np.array(n)
    batch = np.array(b)
    if batch_col and (tokens < batch).any():
        i = int(np.argmax(tokens < batch))
        raise UsageError(f"{p}: row {i + 1}: {tokens_col}={tokens[i]:g} is below {batch_col}={batch[i]:g} "
                         "(each sequence verifies at least one token)")
    if len(np.unique(tokens)) < 2:
        raise UsageError(f"{p}: need at least 2 distinct values in {tokens_col!r} to fit a latency model "
                         f"(got {len(lat)} row(s), {len(np.unique(tokens))} distinct)")
    if not batch_col:
        batch = np.ones_like(tokens)
    return batch, tokens, np.array(lat)


def fit_command(args) -> int:
    batch, tokens, lat = read_latency_csv(args.csv, args.tokens_col, args.latency_col, args.batch_col)
    try:
        model = LatencyModel.fit(batch, tokens, lat, jump_threshold=args.jump_threshold)
    except LatencyModelError as err:
        raise UsageError(f"{args.csv}: {err}") from None
    out = Path(args.out)
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create ({err.strerror})") from None
    from specdec_engine import plots
    from specdec_engine.cache import atomic_write_bytes, sha256_file

    model.save(out / "latency_model.npz")
    desc = model.describe()
    meta = {
        "schema_version": 1, "source": {"csv": str(Path(args.csv).resolve()), "tokens_col": args.tokens_col,
                                        "latency_col": args.latency_col, "batch_col": args.batch_col,
                                        "sha256": sha256_file(args.csv)},
        "jump_threshold": args.jump_threshold, "latency": desc,
        "files": {"latency_model.npz": sha256_file(out / "latency_model.npz")},
    }
    atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    plots.plot_latency_model(model, out / "plots" / "latency_model.png",
                             title=f"{Path(args.csv).name}: {args.latency_col} "
                                   f"(MAPE {desc['mape']:.2f}%, segments {desc['segment_mape']:.2f}%)")
    plots.plot_token_distribution(model, out / "plots" / "token_distribution.png")
    for seg in desc["segments"]:
        print(f"segment from N={seg['start']:>5}: {seg['intercept_ms']:.4f} ms + "
              f"{seg['slope_ms_per_token'] * 1000:.3f} us/token")
    print(f"wrote {out / 'latency_model.npz'}, {out / 'meta.json'}, {out / 'plots'}/")
    print(json.dumps({"boundaries": desc["boundaries"], "n_points": desc["n_points"], "mape": desc["mape"],
                      "segment_mape": desc["segment_mape"], "batch_sizes": desc["batch_sizes"],
                      "out": str(out)}))
    return 0


def add_parser(sub) -> None:
    tiles = sub.add_parser("tiles", help="offline TileSpec latency tiles: profile, fit, calibrate, show")
    tsub = tiles.add_subparsers(dest="tiles_command", required=True, metavar="ACTION")
    from . import tiles_profile

    tiles_profile.add_parsers(tsub)
    fit = tsub.add_parser("fit", help="fit a latency model from a CSV of measured verify latencies")
    fit.add_argument("--csv", required=True, help="CSV with one measured verify forward per row")
    fit.add_argument("--tokens-col", required=True, help="column with the number of tokens in the forward (N)")
    fit.add_argument("--latency-col", required=True, help="column with the latency in ms")
    fit.add_argument("--batch-col", help="column with the number of sequences (B); omitted: B=1 everywhere")
    fit.add_argument("--jump-threshold", type=float, default=DEFAULT_JUMP_THRESHOLD,
                     help="relative departure that starts a new segment (default 0.15)")
    fit.add_argument("--out", required=True, help="output folder (latency_model.npz, meta.json, plots/)")
    fit.set_defaults(func=fit_command)
