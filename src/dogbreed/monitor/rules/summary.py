"""SageMaker's two summary rules: they never trigger; the report reads their numbers."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dogbreed.monitor.rules.base import Rule, num

QUANTILES = {"p50": 50, "p95": 95, "p99": 99, "max": 100, "min": 0}


def quantiles(values) -> dict:
    values = np.asarray([v for v in values if v == v], dtype=float)  # NaN (absent) dropped
    if not values.size:
        return {}
    return {k: round(float(np.percentile(values, q)), 3) for k, q in QUANTILES.items()}


class OverallSystemUsage(Rule):
    name, kind = "OverallSystemUsage", "profiler"
    description = "Summarises system usage: p50/p95/p99/max/min of CPU, each core, I/O wait, memory, disk and each GPU."
    recommendation = "CPU and GPU both under 70% at p95 means the machine is larger than the job; a GPU under 70% with the CPU over 70% points at the CPU."
    streams = ("system",)
    summary_only = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.series: dict[str, list[float]] = defaultdict(list)

    def observe(self, stream: str, record: dict) -> None:
        self.datapoints += 1
        for key, scale in (("cpu", 1), ("iowait", 1), ("mem_percent", 1), ("rss", 1e-6), ("proc_cpu", 1),
                           ("read_mb_s", 1), ("write_mb_s", 1)):
            if key in record:
                self.series[key].append(num(record[key]) * scale)
        for i, core in enumerate(record.get("cores", [])):
            self.series[f"core{i}"].append(num(core))
        for i, gpu in enumerate(record.get("gpus") or []):
            if gpu is not None:
                self.series[f"gpu{i}_util"].append(num(gpu["util"]))
                self.series[f"gpu{i}_mem_percent"].append(num(gpu["mem_percent"]))

    def finish(self) -> None:
        self.details["metrics"] = {k: quantiles(v) for k, v in self.series.items()}


class OverallFrameworkMetrics(Rule):
    name, kind = "OverallFrameworkMetrics", "profiler"
    description = "Summarises where the time went: per phase, steps, step time, data-wait versus compute, and the time outside steps."
    recommendation = "A large data-wait share means the loader is the bottleneck (more --workers, cached embeddings); a large share outside steps means setup, evaluation or checkpoints dominate."
    streams = ("steps",)
    summary_only = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.phases: dict[str, dict] = {}
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.span = [None, None]

    def observe(self, stream: str, record: dict) -> None:
        self.datapoints += 1
        data, compute = record["data"], record["compute"]
        p = self.phases.setdefault(record["phase"], {"steps": 0, "data_s": 0.0, "compute_s": 0.0})
        p["steps"] += 1
        p["data_s"] += data
        p["compute_s"] += compute
        self.durations[record["phase"]].append(data + compute)
        start = record["t"] - data - compute
        self.span[0] = start if self.span[0] is None else min(self.span[0], start)
        self.span[1] = record["t"] if self.span[1] is None else max(self.span[1], record["t"])

    def finish(self) -> None:
        in_steps = 0.0
        for phase, p in self.phases.items():
            total = p["data_s"] + p["compute_s"]
            in_steps += total
            q = quantiles(self.durations[phase])
            p.update({"total_s": round(total, 3), "data_percent": round(100 * p["data_s"] / total, 2) if total else 0.0,
                      "mean_step_s": round(total / p["steps"], 6), "p50_step_s": q.get("p50"), "p95_step_s": q.get("p95"),
                      "data_s": round(p["data_s"], 3), "compute_s": round(p["compute_s"], 3)})
        self.details["phases"] = self.phases
        if self.span[0] is not None:
            loop = self.span[1] - self.span[0]
            self.details["loop_s"] = round(loop, 3)
            self.details["outside_steps_s"] = round(max(0.0, loop - in_steps), 3)
            started, ended = self.meta.get("started"), self.meta.get("ended")
            if started is not None:
                self.details["initialization_s"] = round(self.span[0] - started, 3)
            if ended is not None:
                self.details["finalization_s"] = round(ended - self.span[1], 3)
