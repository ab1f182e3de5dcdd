"""Run by .venv-aiperf's python (not collected by pytest): parse `aiperf ...` argvs with AIPerf's own CLI
(cyclopts over its CLIConfig) and resolve each into the BenchmarkConfig it would run (resolve_config +
build_benchmark_plan, all of AIPerf's validation) without running anything: `run_benchmark` is replaced.

    .venv-aiperf/bin/python tests/tools/aiperf_resolve.py < argvs.json     # [["profile", "--model", ...], ...]

Prints one JSON list per argv (its resolved configs); exits non-zero, AIPerf's error on stderr, at the
first argv AIPerf rejects.
"""

import json
import sys

import aiperf.cli_runner as runner

captured = []
runner.run_benchmark = captured.append

from aiperf.cli import app  # noqa: E402

for argv in json.load(sys.stdin):
    captured.clear()
    try:
        app(argv, exit_on_error=False)
    except SystemExit as e:
        if e.code:
            raise
    (plan,) = captured
    out = []
    for cfg in plan.configs:
        d = cfg.model_dump(mode="json", exclude_none=True)
        d["endpoint"]["api_key_set"] = cfg.endpoint.api_key is not None
        out.append(d)
    print(json.dumps(out))
