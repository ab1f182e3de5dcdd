"""The SGLang adapter: ``--speculative-algorithm TILESPEC`` through SGLang's plugin API (SGLang >= 0.5.14).

- ``plugin.py``    the ``sglang.srt.plugins`` entry point: registers the algorithm (every SGLang process)
- ``algorithm.py`` TILESPEC -> TILESPEC_EAGLE3 / TILESPEC_EAGLE: server-args handling, worker factory
- ``policy.py``    SGLang's adaptive-spec policy protocol, answered by ``specdec_engine.policy``
- ``config.py``    our options (``--speculative-adaptive-config FILE.json``), one pydantic model
- ``prior.py``     per-position acceptance prior from a training log (acc_0, acc_1, ...)
- ``worker.py``    EAGLE V2 worker + our policy in SGLang's AdaptiveController (GPU-only)
- ``warmup.py``    timed replays of the captured verify graphs -> latency model + cache (GPU-only)
- ``runtime.py``   per-scheduler state, specdec_* metrics (prometheus multiprocess: SGLang's /metrics)
- ``compat.py``    every SGLang symbol used, checked; ``python -m specdec_engine.sglang.compat``

Importing this package imports no SGLang module; the adapter imports the policy, never the reverse.
"""
