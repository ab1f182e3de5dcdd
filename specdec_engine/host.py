"""What CPU this host is, for cache keys and for every benchmark's results.

Hosts of one model name differ: one session's "AMD EPYC" had AVX-512 BF16, the next one's AVX2 only and ran the
same benchmark ~2.5x slower, so results name the vector extension as well as the model name. No engine import.
"""

from __future__ import annotations

import os
import platform

CPUINFO = "/proc/cpuinfo"


def _field(name: str, cpuinfo: str) -> str | None:
    """The first ``name : value`` line of ``cpuinfo`` (its value), or None (no such line, no such file)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows. Part of the profile cache key on
    CPU (``specdec_engine.vllm.warmup``): keep it stable."""
    return _field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_isa(cpuinfo: str = CPUINFO) -> str:
    """The vector extension vLLM's CPU build runs on here (its choice in ``CpuPlatform.import_kernels``):
    "AVX-512 BF16", "AVX-512", "AVX2", "no AVX2", or "?" where ``cpuinfo`` cannot be read."""
    flags = _field("flags", cpuinfo)
    if flags is None:
        return "?"
    flags = flags.split()
    if "avx512f" in flags:
        return "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def cpu_model(cpuinfo: str = CPUINFO) -> str:
    """The model name with the vector extension: ``AMD EPYC (AVX2)`` (for contexts that count cores apart)."""
    return f"{cpu_name(cpuinfo)} ({cpu_isa(cpuinfo)})"


def cpu_hardware(cpuinfo: str = CPUINFO) -> str:
    """One line for a benchmark's context: ``AMD EPYC (AVX2), 2 cores (CPU only)``."""
    return f"{cpu_model(cpuinfo)}, {os.cpu_count()} cores (CPU only)"
