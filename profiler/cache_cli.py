"""`specdec cache list|show|validate|clear`: inspect the profile caches the engines write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specdec_engine.cache import META_FILE, ProfileCache, default_cache_root

from .errors import UsageError


def _cache(args) -> ProfileCache:
    return ProfileCache(args.cache_dir or default_cache_root())


def list_command(args) -> int:
    cache = _cache(args)
    entries = cache.entries()
    if not entries:
        print(f"no caches under {cache.root}")
        return 0
    for d in entries:
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
        lat = meta.get("latency", {})
        cal = meta.get("calibration", {})
        print(f"{d.name:60s} points={lat.get('n_points', '?'):>4} boundaries={lat.get('boundaries', '?')} "
              f"calibration_pairs={cal.get('n_pairs', 0)} updated={meta.get('updated_at', '?')}")
    return 0


def _resolve(args, name: str) -> Path:
    p = Path(name)
    if not p.is_dir():
        p = _cache(args).root / name
    if not (p / META_FILE).is_file():
        raise UsageError(f"{name}: not a profile cache (no {META_FILE})")
    return p


def show_command(args) -> int:
    d = _resolve(args, args.name)
    meta = json.loads((d / META_FILE).read_text())
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


def validate_command(args) -> int:
    cache = _cache(args)
    dirs = [_resolve(args, n) for n in args.names] if args.names else cache.entries()
    bad = 0
    for d in dirs:
        problems = cache.validate_dir(d)
        print(f"{d.name}: {'ok' if not problems else 'INVALID: ' + '; '.join(problems)}")
        bad += bool(problems)
    return 1 if bad else 0


def clear_command(args) -> int:
    cache = _cache(args)
    if args.names:
        dirs = [_resolve(args, n) for n in args.names]
    else:
        if not args.all:
            raise UsageError("name the caches to clear, or pass --all")
        dirs = [p for p in (cache.root.iterdir() if cache.root.is_dir() else []) if p.is_dir()]
    for d in dirs:
        shutil.rmtree(d)
        print(f"removed {d}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list/show/validate/clear profile caches")
    p.add_argument("--cache-dir", help="cache root (default: $SPECDEC_CACHE_DIR or ./cache)")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    csub.add_parser("list", help="one line per cache").set_defaults(func=list_command)
    s = csub.add_parser("show", help="print a cache's meta.json")
    s.add_argument("name")
    s.set_defaults(func=show_command)
    v = csub.add_parser("validate", help="verify checksums and that every file loads (exit 1 if any is invalid)")
    v.add_argument("names", nargs="*")
    v.set_defaults(func=validate_command)
    c = csub.add_parser("clear", help="remove caches (named, or all with --all, including moved-aside ones)")
    c.add_argument("names", nargs="*")
    c.add_argument("--all", action="store_true")
    c.set_defaults(func=clear_command)
