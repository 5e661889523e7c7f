"""What the machine this process runs on offers: usable CPUs, the CPU's instruction sets, bf16.

Asked here, and only here, so that data loaders, the server's decode pool, tuning workers, the
profiler and the benchmarks agree on one answer.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from pathlib import Path

# The instruction sets that decide how fast a network runs on a CPU.
NOTABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container
    limited to 2 CPUs on a 64-core host has 2), never less than 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    try:  # cgroup v2: "max 100000" (no limit) or "200000 100000" (2 CPUs)
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if limit == "max" else math.ceil(int(limit) / int(period))
    except (OSError, ValueError):
        return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def notable_flags() -> list[str]:
    """Which of :data:`NOTABLE_FLAGS` this CPU has."""
    return [f for f in NOTABLE_FLAGS if f in cpu_flags()]


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): where bf16 autocast speeds a CPU up."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line for a benchmark's header: model, usable CPUs and the flags that matter."""
    flags = notable_flags()
    return f"{cpu_model()}, {available_cpus()} CPUs, flags: {' '.join(flags) or 'none of ' + ' '.join(NOTABLE_FLAGS)}"
