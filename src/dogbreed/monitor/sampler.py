"""System metrics sampled in the background: CPU (total, per core, I/O wait), memory, disk I/O and,
where NVIDIA GPUs exist, GPU utilisation and memory per GPU (NVML).

Hardware that is absent is recorded as absent: a CPU-only machine's samples carry no ``gpus`` key
and its hardware description lists no GPUs, so GPU rules say "not applicable" instead of seeing 0.
"""

from __future__ import annotations

import logging
import os
import time

import psutil

from dogbreed import machine

log = logging.getLogger(__name__)


def _nvml_handles() -> list:
    """NVML device handles, or [] where there is no NVIDIA driver (or no nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        log.debug("no NVIDIA GPU metrics: %s", exc)
        return []


class SystemSampler:
    """One ``sample()`` per tick; rates (CPU %, disk MB/s) cover the time since the previous tick."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self._children: dict[int, psutil.Process] = {}
        self._gpus = _nvml_handles()
        psutil.cpu_times_percent(percpu=True)  # primes the per-core counters
        self.process.cpu_percent()
        self._io = psutil.disk_io_counters()
        self._io_time = time.monotonic()

    def hardware(self) -> dict:
        gpus = []
        if self._gpus:
            import pynvml

            for h in self._gpus:
                name = pynvml.nvmlDeviceGetName(h)
                gpus.append({"name": name.decode() if isinstance(name, bytes) else name,
                             "memory_total": pynvml.nvmlDeviceGetMemoryInfo(h).total})
        # The cores this process may use: what the Dataloader rule compares worker counts with.
        return {"cpu_cores": machine.available_cpus(), "cpu_model": machine.cpu_model(),
                "cpu_flags": machine.notable_flags(), "memory_total": psutil.virtual_memory().total, "gpus": gpus, "disk_io": self._io is not None}

    def _process_tree(self) -> tuple[int, float]:
        """RSS (bytes) and CPU (% of one core) of this process and its children (data-loader workers)."""
        rss, cpu = self.process.memory_info().rss, self.process.cpu_percent()
        alive = {}
        for child in self.process.children(recursive=True):
            known = self._children.get(child.pid, child)
            try:
                rss += known.memory_info().rss
                cpu += known.cpu_percent()  # 0.0 on a child's first sample
                alive[child.pid] = known
            except psutil.Error:  # exited between listing and reading
                pass
        self._children = alive
        return rss, cpu

    def sample(self) -> dict:
        t = time.time()
        per_core = psutil.cpu_times_percent(percpu=True)
        busy = [max(0.0, 100.0 - c.idle - getattr(c, "iowait", 0.0)) for c in per_core]
        iowait = sum(getattr(c, "iowait", 0.0) for c in per_core) / max(1, len(per_core))
        mem = psutil.virtual_memory()
        rss, proc_cpu = self._process_tree()
        record = {
            "t": round(t, 3), "cpu": round(sum(busy) / max(1, len(busy)), 1), "cores": [round(b, 1) for b in busy],
            "iowait": round(iowait, 1), "mem_used": mem.total - mem.available, "mem_percent": mem.percent,
            "rss": rss, "proc_cpu": round(proc_cpu, 1),
        }
        if self._io is not None:
            now, io = time.monotonic(), psutil.disk_io_counters()
            dt = max(now - self._io_time, 1e-6)
            record["read_mb_s"] = round((io.read_bytes - self._io.read_bytes) / dt / 1e6, 3)
            record["write_mb_s"] = round((io.write_bytes - self._io.write_bytes) / dt / 1e6, 3)
            self._io, self._io_time = io, now
        if self._gpus:
            record["gpus"] = self._gpu_sample()
        return record

    def _gpu_sample(self) -> list[dict]:
        import pynvml

        out = []
        for h in self._gpus:
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                out.append({"util": util, "mem_used": mem.used, "mem_percent": round(100.0 * mem.used / mem.total, 2)})
            except pynvml.NVMLError as exc:  # a GPU that stops answering is absent for this sample
                log.debug("NVML sample failed: %s", exc)
                out.append(None)
        return out
