"""specdec_profiler: offline tools (tiny models, latency tiles, workload profiling, training handoff, A/B loop).

Talks to engines only over HTTP or through files; imports the policy core
and the cache, never an engine adapter.
"""
