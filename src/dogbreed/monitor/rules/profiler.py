"""SageMaker's profiler rules, with its names, defaults and semantics, over dogbreed's recorded
system samples (one datapoint per sampler tick), steps and loader settings."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict, deque

import numpy as np

from dogbreed.monitor.rules.base import Rule, num, percentile


class _GpuWindowRule(Rule):
    """Per-GPU rolling windows of the last ``window`` samples, evaluated once ``patience`` samples exist."""

    streams = ("system",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.series: dict[int, deque] = defaultdict(lambda: deque(maxlen=int(self.params["window"])))
        self.seen: dict[int, int] = defaultdict(int)

    def not_applicable(self) -> str | None:
        return self.no_gpu()

    def gpu_values(self, record: dict, key: str):
        for i, gpu in enumerate(record.get("gpus") or []):
            if gpu is not None:
                yield i, num(gpu.get(key))


class LowGPUUtilization(_GpuWindowRule):
    name, kind = "LowGPUUtilization", "profiler"
    description = "Detects GPUs whose utilisation is low (p95 under threshold_p95) or fluctuates (p95 above it but p5 under threshold_p5), per GPU, over the last `window` samples."
    recommendation = "Look for bottlenecks in the timeline (data loading, host syncs); raise the batch size; fewer GPUs or a smaller instance if the work is small."
    defaults = {"threshold_p95": 70, "threshold_p5": 10, "window": 500, "patience": 1000}

    def observe(self, stream: str, record: dict) -> None:
        for i, util in self.gpu_values(record, "util"):
            self.series[i].append(util)
            self.seen[i] += 1
            self.datapoints += 1
            if self.seen[i] <= self.params["patience"]:
                self.details["waiting"] = f"evaluates after {self.params['patience']} samples per GPU"
                continue
            p95, p5 = percentile(self.series[i], 95), percentile(self.series[i], 5)
            if p95 < self.params["threshold_p95"]:
                self.check(True, record, f"GPU {i}: p95 utilisation {p95:.0f}% < {self.params['threshold_p95']}% (underutilised)")
            else:
                self.check(p5 < self.params["threshold_p5"], record,
                           f"GPU {i}: p95 {p95:.0f}% but p5 {p5:.0f}% < {self.params['threshold_p5']}% (fluctuating)")


class BatchSize(_GpuWindowRule):
    name, kind = "BatchSize", "profiler"
    description = "Detects a batch size too small for the hardware: p95 of CPU, GPU and GPU memory utilisation all under their thresholds over the last `window` samples."
    recommendation = "Raise --batch-size (and scale the learning rate), or train on a smaller GPU."
    defaults = {"cpu_threshold_p95": 70, "gpu_threshold_p95": 70, "gpu_memory_threshold_p95": 70, "window": 500, "patience": 1000}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cpu: deque = deque(maxlen=int(self.params["window"]))
        self.memory: dict[int, deque] = defaultdict(lambda: deque(maxlen=int(self.params["window"])))

    def observe(self, stream: str, record: dict) -> None:
        self.cpu.append(num(record.get("cpu")))
        for i, util in self.gpu_values(record, "util"):
            self.series[i].append(util)
        for i, mem in self.gpu_values(record, "mem_percent"):
            self.memory[i].append(mem)
        self.datapoints += 1
        if self.datapoints <= max(self.params["patience"], self.params["window"]):
            self.details["waiting"] = f"evaluates after {self.params['patience']} samples"
            return
        cpu95 = percentile(self.cpu, 95)
        for i in self.series:
            gpu95, mem95 = percentile(self.series[i], 95), percentile(self.memory[i], 95)
            low = (cpu95 < self.params["cpu_threshold_p95"] and gpu95 < self.params["gpu_threshold_p95"]
                   and mem95 < self.params["gpu_memory_threshold_p95"])
            self.check(low, record, f"GPU {i}: p95 GPU {gpu95:.0f}%, GPU memory {mem95:.0f}%, CPU {cpu95:.0f}%: all low")


class _BottleneckRule(Rule):
    """Share of samples where a GPU idles while the host is busy, over the whole run so far."""

    streams = ("system",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bottlenecks = 0

    def not_applicable(self) -> str | None:
        return self.no_gpu()

    def host_busy(self, record: dict) -> bool:
        raise NotImplementedError

    def observe(self, stream: str, record: dict) -> None:
        gpus = [num(g.get("util")) for g in record.get("gpus") or [] if g]
        if not gpus:
            return
        self.datapoints += 1
        if any(u < self.params["gpu_threshold"] for u in gpus) and self.host_busy(record):
            self.bottlenecks += 1
        share = 100.0 * self.bottlenecks / self.datapoints
        self.details["bottleneck_percent"] = round(share, 2)
        if self.datapoints <= self.params["patience"]:
            self.details["waiting"] = f"evaluates after {self.params['patience']} samples"
            return
        self.check(share > self.params["threshold"], record,
                   f"{share:.0f}% of samples show a GPU under {self.params['gpu_threshold']}% while {self.what}")


class CPUBottleneck(_BottleneckRule):
    name, kind, what = "CPUBottleneck", "profiler", "the CPU is busy"
    description = "Detects a GPU starved by the CPU: the share of samples with a GPU under gpu_threshold while a core is over cpu_threshold exceeds threshold percent."
    recommendation = "Preprocessing is heavy: raise --workers, decode smaller images, or cache embeddings (--train-layers head)."
    defaults = {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000}

    def host_busy(self, record: dict) -> bool:
        return any(num(c) > self.params["cpu_threshold"] for c in record.get("cores", []))


class IOBottleneck(_BottleneckRule):
    name, kind, what = "IOBottleneck", "profiler", "I/O wait is high"
    description = "Detects a GPU starved by storage: the share of samples with a GPU under gpu_threshold while I/O wait is over io_threshold exceeds threshold percent."
    recommendation = "Reading the data is slow: move it to local disk, raise --workers, or cache embeddings."
    defaults = {"threshold": 50, "io_threshold": 50, "gpu_threshold": 10, "patience": 1000}

    def host_busy(self, record: dict) -> bool:
        return num(record.get("iowait")) > self.params["io_threshold"]


class Dataloader(Rule):
    name, kind = "Dataloader", "profiler"
    description = "Checks each image data loader's worker processes against the CPU cores this process is given (under torchrun: its rank's share of the machine's): under min_threshold or over max_threshold percent of them is flagged, except a loader that decodes in the process by design (the CPU embedding where torch's threads take every core); also reports pinned memory on GPUs."
    recommendation = "Set --workers near the number of cores (the default); on GPUs keep pinned memory on."
    defaults = {"min_threshold": 70, "max_threshold": 200}
    streams = ("events",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.details["waiting"] = "no image data loader ran (every split came from cached embeddings)"

    def observe(self, stream: str, record: dict) -> None:
        if record.get("event") != "loader" or record.get("kind") != "images":
            return
        self.datapoints += 1
        machine = self.meta.get("hardware", {}).get("cpu_cores") or 1
        cores = self.meta.get("rank_cores") or machine  # a profile written before ranks were counted: the machine's
        share = f" (this rank's share of {machine})" if cores != machine else ""
        percent = 100.0 * record["workers"] / cores
        self.details.setdefault("loaders", {})[record["phase"]] = {**record, "percent_of_cores": round(percent, 1)}
        if record.get("in_process"):  # no workers by design: the process's own threads decode
            self.details.setdefault("notes", []).append(f"{record['phase']} loader decodes in the process: "
                                                        f"{record['in_process']}")
            return
        self.check(not self.params["min_threshold"] <= percent <= self.params["max_threshold"], record,
                   f"{record['phase']} loader: {record['workers']} worker(s) on {cores} cores{share} = {percent:.0f}% "
                   f"(outside {self.params['min_threshold']}-{self.params['max_threshold']}%)")
        if self.gpus and not record.get("pin_memory"):
            self.details.setdefault("notes", []).append(f"{record['phase']} loader does not pin memory on a GPU machine")


class GPUMemoryIncrease(_GpuWindowRule):
    name, kind = "GPUMemoryIncrease", "profiler"
    description = "Detects growing GPU memory: the mean of the last `window` samples exceeds the mean of the `window` before by more than `increase` percentage points."
    recommendation = "Look for tensors kept across steps (a leak); if not, use a GPU with more memory or a smaller batch."
    defaults = {"increase": 5, "window": 10, "patience": 1000}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.series = defaultdict(lambda: deque(maxlen=2 * int(self.params["window"])))

    def observe(self, stream: str, record: dict) -> None:
        w = int(self.params["window"])
        for i, mem in self.gpu_values(record, "mem_percent"):
            self.series[i].append(mem)
            self.seen[i] += 1
            self.datapoints += 1
            if self.seen[i] <= max(self.params["patience"], 2 * w):
                self.details["waiting"] = f"evaluates after {self.params['patience']} samples per GPU"
                continue
            values = list(self.series[i])
            rise = float(np.mean(values[w:]) - np.mean(values[:w]))
            self.check(rise > self.params["increase"], record, f"GPU {i}: memory up {rise:.1f} points in {w} samples")


class StepOutlier(Rule):
    name, kind = "StepOutlier", "profiler"
    description = "Detects steps slower than mean + stddev x standard deviation of their phase; triggers when more than n_outliers such steps exist (checked every `every` steps once 100 are recorded)."
    recommendation = "Look at the timeline around the outlier steps: data-loader stalls, checkpoint writes, other processes."
    defaults = {"stddev": 3, "n_outliers": 10, "mode": "all", "every": 100}
    choices = {"mode": ("all", "train", "eval", "test", "embed")}
    streams = ("steps",)
    all_ranks = True  # each torchrun rank's steps are a series of their own
    MIN_STEPS = 100

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.series: dict[str, _Growing] = defaultdict(_Growing)

    def observe(self, stream: str, record: dict) -> None:
        if self.params["mode"] not in ("all", record["phase"]):
            return
        phase = record["phase"] + (f" (rank {record['rank']})" if record.get("rank") else "")
        self.datapoints += 1
        series = self.series[phase]
        series.append(record["step"], record["data"] + record["compute"])
        if series.n > self.MIN_STEPS and series.n % int(self.params["every"]) == 0:
            self._evaluate(phase, record)
        elif series.n <= self.MIN_STEPS:
            self.details["waiting"] = f"evaluates once a phase has more than {self.MIN_STEPS} steps"

    def _evaluate(self, phase: str, record: dict) -> None:
        # Vectorised over the whole history: a live run checks every `every` steps for hours.
        steps, values = self.series[phase].arrays()
        mean, std = float(values.mean()), float(values.std())
        threshold = mean + self.params["stddev"] * std
        above = np.flatnonzero(values > threshold)
        slowest = above[np.argsort(-values[above])[:10]]
        self.details.setdefault("phases", {})[phase] = {
            "steps": len(values), "mean_s": mean, "std_s": std, "threshold_s": threshold, "outliers": len(above),
            "slowest": [(int(steps[i]), float(values[i])) for i in slowest],
        }
        self.check(len(above) > self.params["n_outliers"], record,
                   f"{phase}: {len(above)} steps over {threshold * 1000:.1f} ms (mean + {self.params['stddev']} sd)")

    def finish(self) -> None:
        for phase, series in self.series.items():
            if series.n > self.MIN_STEPS and series.n % int(self.params["every"]):
                self._evaluate(phase, {"step": int(series.arrays()[0][-1]), "phase": phase})


class _Growing:
    """(step, seconds) pairs in numpy arrays that double as they fill."""

    def __init__(self) -> None:
        self.n = 0
        self.steps = np.zeros(256, dtype=np.int64)
        self.values = np.zeros(256)

    def append(self, step: int, value: float) -> None:
        if self.n == len(self.values):
            self.steps = np.concatenate([self.steps, np.zeros_like(self.steps)])
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
        self.steps[self.n], self.values[self.n] = step, value
        self.n += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.steps[: self.n], self.values[: self.n]


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


class LoadBalancing(Rule):
    name, kind = "LoadBalancing", "profiler"
    description = ("Detects uneven work across GPUs or torchrun ranks: the Jensen-Shannon distance between two GPUs' "
                   "utilisation histograms exceeds threshold, or the share of a train step one rank waits for its data "
                   "exceeds another's by more than data_share_gap (checked once every rank has min_steps steps).")
    recommendation = "Check the distributed strategy: every rank should get the same batch size and work."
    defaults = {"threshold": 0.2, "patience": 1000, "data_share_gap": 0.2, "min_steps": 10}
    streams = ("system", "steps")
    all_ranks = True
    BINS = np.arange(0, 102, 2)  # 0-2, ..., 98-100 (100% included)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hist: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(self.BINS) - 1))
        self.waits: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # rank -> data s, step s, steps

    def not_applicable(self) -> str | None:
        if len(self.gpus) >= 2 or self.meta.get("ranks", 1) >= 2:
            return None
        return "fewer than 2 GPUs on this machine and one rank"

    def observe(self, stream: str, record: dict) -> None:
        if stream == "steps":
            self._observe_step(record)
            return
        if record.get("rank"):  # GPUs are compared within rank 0's machine
            return
        gpus = record.get("gpus") or []
        for i, gpu in enumerate(gpus):
            if gpu is not None:
                self.hist[i] += np.histogram([min(num(gpu["util"]), 100.0)], bins=self.BINS)[0]
        self.datapoints += 1
        if len(self.hist) < 2 or self.datapoints <= self.params["patience"]:
            self.details["waiting"] = f"evaluates after {self.params['patience']} samples"
            return
        worst = max(((a, b, _js_distance(self.hist[a], self.hist[b])) for a, b in itertools.combinations(sorted(self.hist), 2)),
                    key=lambda x: x[2])
        self.check(worst[2] > self.params["threshold"], record, f"GPUs {worst[0]} and {worst[1]}: distance {worst[2]:.2f}")

    def _observe_step(self, record: dict) -> None:
        """Under DDP every rank's step ends together (the gradients' all-reduce waits for the last),
        so uneven work shows as one rank waiting for its data while the others wait in the exchange."""
        if record["phase"] != "train":
            return
        totals = self.waits[record.get("rank", 0)]
        totals[0] += record["data"]
        totals[1] += record["data"] + record["compute"]
        totals[2] += 1
        self.datapoints += 1
        ranks = self.meta.get("ranks", 1)
        if len(self.waits) < ranks or min(t[2] for t in self.waits.values()) < self.params["min_steps"]:
            return
        shares = {r: t[0] / t[1] if t[1] else 0.0 for r, t in self.waits.items()}
        self.details["data_share_by_rank"] = {str(r): round(v, 4) for r, v in sorted(shares.items())}
        high, low = max(shares, key=shares.get), min(shares, key=shares.get)
        self.check(shares[high] - shares[low] > self.params["data_share_gap"], record,
                   f"rank {high} waits {100 * shares[high]:.0f}% of each train step for data, rank {low} "
                   f"{100 * shares[low]:.0f}%: uneven input work")


class MaxInitializationTime(Rule):
    name, kind = "MaxInitializationTime", "profiler"
    description = "Detects a long start: no step has begun `threshold` minutes after the run started (or resumed)."
    recommendation = "Look at what runs before the first step: data checks over a slow disk, weight downloads, model build."
    defaults = {"threshold": 20}
    streams = ("system", "steps")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A resumed run starts again: each start has its own initialisation, measured from it.
        self.starts = sorted(t for t in (self.meta.get("started"), *self.meta.get("resumed", [])) if t is not None)
        self.start: float | None = None
        self.first_step: float | None = None

    def observe(self, stream: str, record: dict) -> None:
        start = max((s for s in self.starts if s <= record["t"]), default=None)
        if start is None:
            return
        if start != self.start:  # the first record of this (re)start
            self.start, self.first_step = start, None
        if self.first_step is not None:
            return
        self.datapoints += 1
        if stream == "steps":
            self.first_step = record["t"] - record["data"] - record["compute"]
            self.details["initialization_s"] = round(self.first_step - start, 3)
            self.check(self.first_step - start > 60 * self.params["threshold"], record,
                       f"first step began {(self.first_step - start) / 60:.1f} min after the start")
        elif record["t"] - start > 60 * self.params["threshold"]:
            self.check(True, record, f"no step after {(record['t'] - start) / 60:.1f} min")
