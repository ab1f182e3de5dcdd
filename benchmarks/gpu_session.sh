#!/usr/bin/env bash
# One lease of a GPU (the `device` tool here, or any CUDA box with torch + triton):
#   kernels correctness + speed, then offline TileSpec latency profiles of real model shapes.
# Writes everything under ${OUT:-benchmarks/results/gpu}; results.tar.gz holds the cache folders.
# No install: the repo's folders are put on PYTHONPATH under their import names.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT/cache" /tmp/specdec_pp
ln -sfn "$PWD/kernels" /tmp/specdec_pp/specdec_kernels
ln -sfn "$PWD/profiler" /tmp/specdec_pp/specdec_profiler
export PYTHONPATH="$PWD:/tmp/specdec_pp${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import matplotlib" 2>/dev/null || echo "no matplotlib: plots are drawn afterwards" | tee -a "$OUT/gpu.txt"
[ "${SKIP_KERNELS:-0}" = 1 ] || timeout ${KERNELS_S:-180} python3 benchmarks/kernels_gpu.py --out "$OUT" --cases ${CASES:-2000} 2>&1 | tee "$OUT/kernels.log"
prof() {  # name config context batches budget
  timeout $(( $5 + ${SLACK_S:-80} )) python3 -m specdec_profiler.cli tiles profile --hf-config "benchmarks/configs/$2.json" \
    --model-name "$1" --context-len "$3" --batch-sizes "$4" --k 8 --repeats 20 --budget-s "$5" --out "$OUT/cache" 2>&1 \
    | grep -v "verify grid" | tee -a "$OUT/profile.log"
}
for job in ${PROFILES:-llama-3.1-8b:512 llama-3.1-8b:4096 qwen3-8b:512 qwen2.5-14b:512 qwen2.5-14b:4096}; do
  cfg=${job%%:*}; ctx=${job##*:}
  prof "$cfg-ctx$ctx" "$cfg" "$ctx" "1,2,4,8,12,16,24,32,40,48,64,80,96,128" ${BUDGET:-60}
done
tar -C "$OUT" -czf "$OUT/results.tar.gz" cache && rm -rf "$OUT/cache"
ls -la "$OUT"
