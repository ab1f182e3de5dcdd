"""The profile cache: ``<root>/<model>_<gpu>_tp<N>/`` with the latency model, calibration and plots.

Layout (../shared/DESIGN.md):

    latency_model.npz    measured table + fitted TileSpec segments
    calibration.npz      confidence -> P(accept) map with its counts and errors
    meta.json            schema, key fields, versions, grid, sha256 of both npz files
    plots/latency_model.png, plots/calibration.png, plots/token_distribution.png

Rules that keep a serving engine safe:
- every file is written to a temporary name and renamed into place, and
  meta.json (which carries the sha256 of the npz files) is written last, so
  a crash mid-write leaves a cache that fails verification, never one that
  loads half-written data;
- a cache that fails to load or verify is moved aside
  (``<dir>.corrupt-<utc time>``) with a warning and reported as missing, so
  the engine re-profiles; a corrupt ``calibration.npz`` alone is moved aside
  alone and re-learned;
- a cache written for another dtype, engine version or model identity is
  "stale" and moved aside the same way;
- an unwritable root degrades to in-memory operation with one warning; it
  never raises into the engine;
- the key is sanitised: no model name can produce a path outside the root;
- the calibration is the drafter's, not the target's: meta.json names the
  drafter it was learned over (``calibration_drafter``, see
  :func:`drafter_identity`), and an engine drafting with another one starts
  from a fresh calibration (the profile itself is reused). Before this, a
  calibration learned over one EAGLE head was loaded for another head of the
  same target and served until the online updates replaced it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .policy.calibration import CALIBRATION_FILE, Calibration
from .policy.latency_model import LATENCY_MODEL_FILE, LatencyModel

logger = logging.getLogger("specdec_engine.cache")

SCHEMA_VERSION = 1
META_FILE = "meta.json"
PLOTS_DIR = "plots"
OFFLINE_ENGINE_PREFIX = "offline-"  # CacheKey.engine of profiles written by the offline profiler
DEFAULT_CACHE_ENV = "SPECDEC_CACHE_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
DRAFTER_META = "calibration_drafter"  # meta.json: the drafter the calibration (and history priors) were learned over
DRAFTER_SCOPED_META = ("calibration", "history_priors")  # what belongs to that drafter besides calibration.npz


def default_cache_root() -> Path:
    """``$SPECDEC_CACHE_DIR``, else ``./cache`` (DESIGN: ``cache/<model>_<gpu>_tp<N>/``)."""
    return Path(os.environ.get(DEFAULT_CACHE_ENV, "cache"))


def sanitize(part: str, max_len: int = 80) -> str:
    """A file-name-safe token: no separators, no leading dots, bounded length."""
    s = _SAFE.sub("-", part.replace("/", "--").replace("\\", "--")).strip("-.")
    s = re.sub(r"\.{2,}", ".", s)
    return (s or "unknown")[:max_len]


@dataclass(frozen=True)
class CacheKey:
    """Identity of one profile. ``dirname`` is ``<model>_<gpu>_tp<N>``; the rest is checked from meta.json."""

    model: str
    gpu: str
    tp: int = 1
    dtype: str = "unknown"
    engine: str = "unknown"
    engine_version: str = "unknown"

    @property
    def model_token(self) -> str:
        name = self.model.rstrip("/")
        looks_like_path = name.startswith(("/", ".", "~")) or os.path.isdir(name)
        if looks_like_path:
            base = os.path.basename(os.path.abspath(os.path.expanduser(name)))
            digest = hashlib.sha256(os.path.abspath(os.path.expanduser(name)).encode()).hexdigest()[:8]
            return f"{sanitize(base, 60)}-{digest}"
        return sanitize(name)

    @property
    def dirname(self) -> str:
        return f"{self.model_token}_{sanitize(self.gpu, 60)}_tp{int(self.tp)}"

    def identity(self) -> dict[str, Any]:
        return asdict(self)


def drafter_identity(base: str, draft_model: str | None = None) -> str:
    """Which drafter a calibration belongs to: the method (``ngram``, ``eagle3``, ...), and for a model drafter its
    model as the cache key names a model (folder name + hash of its absolute path, or the hub id).

    The same score means different things under different drafters: an EAGLE-3 head's cumulative confidence
    and an EAGLE-1 head's are calibrated differently (raw ECE 0.337 and 0.296 on the tiny target), and prompt
    lookup's scores are not probabilities at all."""
    if not draft_model:
        return sanitize(base)
    return f"{sanitize(base)}:{CacheKey(model=str(draft_model), gpu='-').model_token}"


def calibration_mismatch(meta: dict, drafter: str | None) -> str | None:
    """Why the cached calibration must not be used by an engine drafting with ``drafter`` (None: it may).

    A cache from before drafters were recorded (no ``calibration_drafter``) is used as it is: which drafter
    it was learned over is not known, and the online updates correct it."""
    stored = meta.get(DRAFTER_META)
    if drafter is None or stored is None or stored == drafter:
        return None
    return f"the cached calibration was learned over drafter {stored!r}, this engine drafts with {drafter!r}"


def _without_drafter_state(meta: dict) -> dict:
    """meta.json without what belongs to the drafter its calibration was learned over."""
    return {k: v for k, v in meta.items() if k not in DRAFTER_SCOPED_META}


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + fsync + rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _npz_bytes(obj) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **obj.to_arrays())
    return buf.getvalue()


@dataclass
class CacheEntry:
    directory: Path
    meta: dict
    latency: LatencyModel | None
    calibration: Calibration | None


class ProfileCache:
    """Read/write profile caches under ``root``; never raises an OSError into the caller."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_root()
        self.writable = True
        self._warned_unwritable = False

    # ------------------------------------------------------------------ paths
    def path_for(self, key: CacheKey) -> Path:
        p = (self.root / key.dirname).resolve()
        root = self.root.resolve()
        if p.parent != root:
            raise ValueError(f"cache key {key.dirname!r} escapes the cache root {root}")
        return p

    def _unwritable(self, err: BaseException) -> None:
        self.writable = False
        if not self._warned_unwritable:
            self._warned_unwritable = True
            logger.warning("TileSpec: cache dir %s is not writable (%s); keeping profiles in memory only",
                           self.root, err)

    def move_aside(self, path: Path, why: str) -> Path | None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dest = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            os.replace(path, dest)
        except OSError as err:
            logger.warning("TileSpec: %s is unusable (%s) and could not be moved aside (%s); ignoring it",
                           path, why, err)
            return None
        logger.warning("TileSpec: %s is unusable (%s); moved aside to %s", path, why, dest.name)
        return dest

    # ------------------------------------------------------------------ read
    def load(self, key: CacheKey, drafter: str | None = None) -> CacheEntry | None:
        """The verified cache for ``key``, or None (missing, corrupt or stale: moved aside, with a warning).

        ``drafter`` (:func:`drafter_identity`): a calibration learned over another drafter is not returned, nor
        are that drafter's history priors (the entry's meta keeps neither); the files stay until this engine
        saves its own."""
        d = self.path_for(key)
        meta_path = d / META_FILE
        if not d.is_dir():
            return None
        if not meta_path.is_file():
            if (d / LATENCY_MODEL_FILE).exists():
                self.move_aside(d, "no meta.json (interrupted write?)")
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("meta.json is not an object")
        except (OSError, ValueError) as err:
            self.move_aside(d, f"meta.json unreadable: {err}")
            return None
        problem = self._check_meta(meta, key)
        if problem:
            self.move_aside(d, problem)
            return None
        files = meta.get("files", {})
        try:
            lat_path = d / LATENCY_MODEL_FILE
            if sha256_file(lat_path) != files.get(LATENCY_MODEL_FILE):
                raise ValueError("sha256 mismatch")
            latency = LatencyModel.load(lat_path)
        except Exception as err:  # noqa: BLE001 - any failure means: re-profile
            self.move_aside(d, f"{LATENCY_MODEL_FILE}: {err}")
            return None
        calibration = None
        cal_path = d / CALIBRATION_FILE
        if cal_path.exists():
            try:
                if sha256_file(cal_path) != files.get(CALIBRATION_FILE):
                    raise ValueError("sha256 mismatch")
                calibration = Calibration.load(cal_path)
            except Exception as err:  # noqa: BLE001
                self.move_aside(cal_path, f"{CALIBRATION_FILE}: {err}; it will be re-learned")
                calibration = None
        other = calibration_mismatch(meta, drafter)
        if other:
            logger.info("TileSpec: %s: starting a new calibration (%s)", other, d)
            calibration = None
            meta = _without_drafter_state(meta)
        return CacheEntry(d, meta, latency, calibration)

    @staticmethod
    def _check_meta(meta: dict, key: CacheKey) -> str | None:
        if meta.get("schema_version") != SCHEMA_VERSION:
            return f"schema_version {meta.get('schema_version')!r} != {SCHEMA_VERSION}"
        stored = meta.get("key", {})
        # a profile made offline (`specdec tiles profile`, engine "offline-<framework>") feeds the engine
        # for the same model, GPU, TP and dtype: that is what it is for; engine and its version are then
        # not part of the match
        offline = str(stored.get("engine", "")).startswith(OFFLINE_ENGINE_PREFIX)
        fields = ("model", "gpu", "tp", "dtype") if offline else ("model", "gpu", "tp", "dtype", "engine",
                                                                  "engine_version")
        for field_name in fields:
            want = getattr(key, field_name)
            if stored.get(field_name) != want:
                return f"stale: {field_name} {stored.get(field_name)!r} != {want!r}"
        return None

    # ------------------------------------------------------------------ write
    @contextlib.contextmanager
    def _locked(self, d: Path):
        import fcntl

        with open(d / ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def save(self, key: CacheKey, latency: LatencyModel | None = None,
             calibration: Calibration | None = None, extra_meta: dict | None = None,
             plots: bool = True, token_histogram: dict | None = None, drafter: str | None = None) -> Path | None:
        """Write what is given (latency and/or calibration) and refresh meta.json; None if not writable.
        ``drafter``: the drafter the calibration was learned over (:func:`drafter_identity`), recorded with it."""
        if not self.writable:
            return None
        try:
            d = self.path_for(key)
            d.mkdir(parents=True, exist_ok=True)
            with self._locked(d):
                meta_path = d / META_FILE
                meta = {}
                if meta_path.is_file():
                    with contextlib.suppress(ValueError, OSError):
                        meta = json.loads(meta_path.read_text())
                        if self._check_meta(meta, key):
                            meta = {}
                files = dict(meta.get("files", {}))
                if latency is not None:
                    atomic_write_bytes(d / LATENCY_MODEL_FILE, _npz_bytes(latency))
                    files[LATENCY_MODEL_FILE] = sha256_file(d / LATENCY_MODEL_FILE)
                    meta["latency"] = latency.describe()
                if calibration is not None:
                    atomic_write_bytes(d / CALIBRATION_FILE, _npz_bytes(calibration))
                    files[CALIBRATION_FILE] = sha256_file(d / CALIBRATION_FILE)
                    if drafter is not None and calibration_mismatch(meta, drafter):  # the other drafter's too
                        meta = _without_drafter_state(meta)
                    meta["calibration"] = calibration.summary()
                    if drafter is not None:
                        meta[DRAFTER_META] = drafter
                if LATENCY_MODEL_FILE not in files:
                    raise ValueError("a cache needs a latency model before anything else is written")
                from . import __version__

                meta.update({
                    "schema_version": SCHEMA_VERSION,
                    "key": key.identity(),
                    "dirname": key.dirname,
                    "package": "specdec-engine",
                    "package_version": __version__,
                    "files": files,
                    "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                })
                meta.setdefault("created_at", meta["updated_at"])
                if extra_meta:
                    meta.update(extra_meta)
                atomic_write_bytes(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        except OSError as err:
            self._unwritable(err)
            return None
        if plots:
            self.write_plots(d, latency, calibration, token_histogram)
        return d

    def write_plots(self, d: Path, latency: LatencyModel | None, calibration: Calibration | None,
                    token_histogram: dict | None = None) -> None:
        """Best effort: a plotting failure is a warning, never an engine error."""
        try:
            from . import plots

            (d / PLOTS_DIR).mkdir(exist_ok=True)
            if latency is not None:
                plots.plot_latency_model(latency, d / PLOTS_DIR / "latency_model.png")
                plots.plot_token_distribution(latency, d / PLOTS_DIR / "token_distribution.png", token_histogram)
            if calibration is not None:
                plots.plot_calibration(calibration, d / PLOTS_DIR / "calibration.png")
        except Exception as err:  # noqa: BLE001
            logger.warning("TileSpec: could not write plots in %s: %s", d, err)

    # ------------------------------------------------------------------ maintenance
    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and (p / META_FILE).exists()
                      and ".corrupt-" not in p.name)

    def validate_dir(self, d: Path) -> list[str]:
        """Problems found in one cache directory (empty list: valid)."""
        problems = []
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError) as err:
            return [f"meta.json: {err}"]
        if meta.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema_version {meta.get('schema_version')!r} != {SCHEMA_VERSION}")
        for name, digest in meta.get("files", {}).items():
            p = d / name
            if not p.exists():
                problems.append(f"{name}: missing")
            elif sha256_file(p) != digest:
                problems.append(f"{name}: sha256 mismatch")
            else:
                try:
                    (LatencyModel if name == LATENCY_MODEL_FILE else Calibration).load(p)
                except Exception as err:  # noqa: BLE001
                    problems.append(f"{name}: {err}")
        if LATENCY_MODEL_FILE not in meta.get("files", {}):
            problems.append(f"{LATENCY_MODEL_FILE}: not recorded in meta.json")
        return problems


class CalibrationAutosave:
    """Persist an engine's online calibration every ``interval_s`` (atomic writes; never raises).

    Both engine adapters learn calibration while serving and save it on this
    schedule. If the cache directory vanished meanwhile (a deleted volume),
    the whole profile is written again, not a calibration without its
    latency model.
    """

    def __init__(self, interval_s: float):
        self.interval_s = float(interval_s)
        self._last = time.monotonic()

    def maybe_save(self, cache: "ProfileCache", key: "CacheKey | None", latency, calibration, *,
                   profile_meta: dict | None = None, extra_meta=None, force: bool = False,
                   drafter: str | None = None) -> None:
        """``extra_meta``: a dict, or a function returning one (called only when a save is due)."""
        if key is None or calibration is None or latency is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        if callable(extra_meta):  # built only when a save is due (callers run this check on every step)
            extra_meta = extra_meta()
        self._last = now
        if calibration.n_pairs == 0:
            return
        try:
            if not cache.path_for(key).joinpath("meta.json").exists():
                cache.save(key, latency, calibration, extra_meta={**(profile_meta or {}), **(extra_meta or {})},
                           plots=False, drafter=drafter)
            else:
                cache.save(key, calibration=calibration, extra_meta=extra_meta, plots=force, drafter=drafter)
        except Exception as err:  # noqa: BLE001 - persistence must never hurt serving
            logger.warning("TileSpec: could not save calibration: %s", err)
