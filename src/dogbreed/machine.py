"""What the machine this process runs on offers: usable CPUs, the CPU's instruction sets, the
devices a run may ask for. (Whether it runs bf16 natively: ``runtime.backends.native_bf16``.)

Asked here, and only here, so that data loaders, the server's decode pool, tuning workers, the
profiler and the benchmarks agree on one answer. One setting is made here too: how the C allocator
treats freed memory (:func:`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import sys
from pathlib import Path

from dogbreed.errors import DogbreedError

# The instruction sets that decide how fast a network runs on a CPU.
NOTABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_FREED = 2**31 - 1  # bytes free at the heap's top before glibc returns them (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a process frees, for its next allocations, instead of
    handing it back to the system; True where it took effect.

    A network's forward pass allocates its activations afresh every batch (a resnet50's first
    ones are 26 MB at batch 16 in bf16, 51 MB in fp32). glibc serves blocks that large with
    ``mmap`` and unmaps them when freed, so every batch faults every page of them in again and
    zeroes it: measured on an Intel Xeon with AMX (2 CPUs), resnet50 folded in bf16 at batch 16 ran
    72.6 img/s so, and 90.0 img/s once freed memory is kept (``benchmarks/cpu_forward_bench.py``). The usual cure
    is another allocator preloaded (jemalloc, tcmalloc), which needs a system package and a
    launcher; glibc does the same with two of its own settings, made here through ``mallopt``
    (no Python library exposes them): no ``mmap`` for large blocks, and no trimming of the heap
    below 2 GB free. The process then keeps its peak of memory, not more, which a training or a
    server reaches on its first batches anyway. Elsewhere (musl, macOS, Windows) this does nothing.
    Set ``DOGBREED_KEEP_FREED_MEMORY=0`` to leave the allocator as it was."""
    if os.environ.get("DOGBREED_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED))


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


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str = "auto"):
    """The torch device ``--device NAME`` means here; a name that is not a device this machine can
    train on is one line saying which are."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DogbreedError(f"device {name!r} is not valid; use {DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DogbreedError(f"device {name!r} cannot train dogbreed models; use {DEVICES}")
    if not torch.cuda.is_available():
        raise DogbreedError(f"device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DogbreedError(f"device {name} was asked for but only {torch.cuda.device_count()} GPU(s) are visible "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return rank_gpu(device, torch.cuda.device_count())


def rank_gpu(device, gpus: int):
    """Under torchrun each rank on a machine takes the GPU of its LOCAL_RANK (training and tuning
    alike); an index names a GPU only where one rank runs on the machine."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "LOCAL_RANK" not in os.environ:
        return device
    local, ranks_here = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if ranks_here == 1:
        return device
    if device.index is not None:
        raise DogbreedError(f"--device {device} names one GPU, but torchrun started {ranks_here} ranks on this machine "
                            f"and each takes the GPU of its LOCAL_RANK; pass --device cuda")
    if ranks_here > gpus:
        if gpus == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):  # a launcher that gives each rank its own GPU
            return torch.device("cuda", 0)
        raise DogbreedError(f"torchrun started {ranks_here} ranks on this machine but {gpus} GPU(s) are visible; "
                            f"pass --nproc-per-node {gpus}, or --device cpu")
    return torch.device("cuda", local)
