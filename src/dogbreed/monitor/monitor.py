"""The monitor a training run carries: it times every step, reads debugger tensors, samples the
system in a background thread, runs the rules live and, at the end, writes the report.

The training thread only timestamps steps and queues records; the background thread writes the
files, feeds the rules and logs a trigger the moment it fires. A rule with ``action: stop`` ends
training after the current step (SageMaker's StopTraining).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import platform
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from dogbreed import remote
from dogbreed.distributed import ALONE, Ranks
from dogbreed.hooks import NoHooks
from dogbreed.monitor.probes import FLUSH_EVERY, TensorProbe, TraceWindow
from dogbreed.monitor.rules import RuleSet, load_rules_file
from dogbreed.monitor.sampler import SystemSampler
from dogbreed.monitor.streams import PROFILE_DIR, STREAMS, JsonlWriter, read_meta, write_meta

log = logging.getLogger(__name__)

EARLY_STEPS = 10  # train steps recorded in full at the start (ReLU inputs, gradient spreads)


class Monitor(NoHooks):
    """The profiler: implements every hook of ``dogbreed.hooks.NoHooks``."""

    def __init__(self, run_dir: Path, *, device: torch.device, meta: dict, ranks: Ranks = ALONE, interval_ms: int = 500,
                 debug_interval: int = 25, trace_start: int = 5, trace_steps: int = 5, rules: str | None = None,
                 resume: bool = False) -> None:
        self.folder = Path(run_dir) / PROFILE_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        if rules:  # the run keeps its own copy: `dogbreed report` reruns the same rules
            settings = load_rules_file(rules)
            shutil.copyfile(remote.staged_file(rules), self.folder / "rules.yaml")
        else:
            settings = load_rules_file(self.folder / "rules.yaml") if (self.folder / "rules.yaml").exists() else {}
        self.device, self.interval = device, max(0.05, interval_ms / 1000)
        self.debug_interval = debug_interval
        self.sampler = SystemSampler()
        now = time.time()
        previous = read_meta(self.folder) if resume else None
        self.meta = previous or {
            "run": Path(run_dir).name, "started": now, "hostname": socket.gethostname(), "pid": os.getpid(),
            "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "hardware": self.sampler.hardware(), "loaders": {}, "resumed": [],
            "settings": {"interval_ms": interval_ms, "debug_interval": debug_interval, "early_steps": EARLY_STEPS,
                         "trace_start": trace_start, "trace_steps": trace_steps},
        }
        self.meta.update(meta)
        # The cores this process sizes its loaders by: under torchrun its share of the machine's, not
        # all of them (each rank decodes with its own workers); what the Dataloader rule counts against.
        self.meta["rank_cores"] = ranks.local_cpus()
        self.meta["status"] = "running"
        if resume and previous:
            self.meta["resumed"].append(now)
        self.rules = RuleSet(self.meta, settings)
        self.stop_requested, self.stopped_by = False, None
        self.epoch = self._step = 0
        self.counts: dict[str, int] = collections.defaultdict(int)
        self.probe: TensorProbe | None = None
        self.trace = TraceWindow(self.folder / "trace", trace_start, trace_steps, device)
        self._writers = {name: JsonlWriter(self.folder / f"{name}.jsonl") for name in STREAMS}
        self._queues = {name: collections.deque() for name in STREAMS if name != "system"}  # system: sampled on the thread
        # Under torchrun on images: the other ranks' steps and system samples, sent at each epoch's end.
        self.ranks = ranks  # under DDP the other ranks' step times and samples join this profile
        self._ranked = {"steps": collections.deque(), "system": collections.deque()}
        from tensorboardX import SummaryWriter  # thread-safe: the training and monitor threads both write

        self._tensorboard = SummaryWriter(str(self.folder / "tensorboard"), flush_secs=10)
        self._wall0, self._perf0 = now, time.perf_counter()
        self._failed = False
        write_meta(self.folder, self.meta)
        self.note({"event": "resume" if resume and previous else "start"})
        self._halt = threading.Event()
        self._ticking = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dogbreed-monitor", daemon=True)
        self._thread.start()

    # -- what training calls ----------------------------------------------------------------------

    def watch(self, module: nn.Module, prefix: str = "", start_step: int = 0) -> None:
        """Debugger tensors of ``module``'s trainable parameters (names get ``prefix``)."""
        self.probe = TensorProbe(module, prefix=prefix, interval=self.debug_interval, early_steps=EARLY_STEPS)
        self.counts["train"] = start_step
        self.meta["tensors"] = self.probe.describe()
        write_meta(self.folder, self.meta)

    def describe_data(self, classes: list[str], train_counts: list[int]) -> None:
        self.meta.update(classes=classes, class_counts=train_counts)
        write_meta(self.folder, self.meta)

    def describe_loader(self, phase: str, loader, in_process: str | None = None) -> None:
        """``in_process``: why a loader without workers decodes in this process by design (the
        Dataloader rule then does not flag it)."""
        if isinstance(loader, torch.utils.data.DataLoader):
            info = {"kind": "images", "workers": loader.num_workers, "pin_memory": loader.pin_memory,
                    "persistent_workers": loader.persistent_workers,
                    # under DDP the loader deals out global batches: its batch_sampler holds their size
                    "batch_size": loader.batch_size or getattr(loader.batch_sampler, "batch_size", None),
                    "prefetch_factor": loader.prefetch_factor,
                    **({"in_process": in_process} if in_process and not loader.num_workers else {})}
        else:
            info = {"kind": "cached embeddings in memory", "workers": 0, "batch_size": getattr(loader, "batch_size", None)}
        self.meta["loaders"][phase] = info
        write_meta(self.folder, self.meta)
        self.note({"event": "loader", "phase": phase, **info})

    def steps(self, batches: Iterable, phase: str) -> Iterator:
        """``batches``, timing each step: data wait (inside ``next``) and compute (the loop body)."""
        self.note({"event": "phase", "phase": phase, "epoch": self.epoch, "state": "begin"})
        train = phase == "train"
        step = self.counts[phase]
        clock, queue, epoch = time.perf_counter, self._queues["steps"], self.epoch
        try:
            for batch, t0, t1 in waited(batches):
                if train:
                    self._step = step
                    self.trace.before_step(step)
                    if self.probe:
                        self.probe.before_forward(step)
                yield batch
                t2 = clock()
                queue.append((self._wall(t2), phase, epoch, step, t1 - t0, t2 - t1))
                if train and (event := self.trace.after_step(step)):
                    self.note(event)
                step += 1
                # After a step: a stopped epoch still trained; never cuts embed/eval. Under torchrun the
                # ranks stop together after the epoch (``fit`` asks rank 0's rules at its start).
                if train and self.stop_requested and not self.ranks.ddp:
                    break
        finally:
            self.counts[phase] = step
            if train:
                if event := self.trace.stop(step - 1):
                    self.note(event)
                if self.probe:
                    self.probe.remove_hooks()
            self.note({"event": "phase", "phase": phase, "epoch": epoch, "state": "end"})

    def after_backward(self, loss: torch.Tensor) -> None:
        if self.probe:
            self.probe.after_backward(self._step, self.epoch, round(time.time(), 3), loss)

    def after_step(self) -> None:
        if self.probe:
            self.probe.after_step()
            if self.probe.backlog >= FLUSH_EVERY:
                self._flush_tensors()

    def epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, row: dict) -> None:
        self._receive()
        self._flush_tensors()
        self.note({"event": "epoch", **row, "step": self.counts["train"]})
        self._histograms(row["epoch"])
        # The rules see the epoch now, not at the thread's next tick: on cached embeddings a whole
        # run's epochs take less than one interval, and a stop must end training after this epoch.
        self._tick(sample=False)

    def note(self, event: dict) -> None:
        self._queues["events"].append({"t": round(time.time(), 3), **event})

    def close(self, status: str = "completed") -> None:
        """Stops sampling, runs the rules' final evaluation, closes the files."""
        if status == "completed":  # the other ranks' last records (their test steps); a failed run has no partner
            self._receive()
        if self.trace.active and (event := self.trace.stop(self.counts["train"] - 1)):
            self.note(event)
        self._flush_tensors()
        self.note({"event": "end", "status": status})
        self._halt.set()
        self._thread.join(timeout=30)
        self._tick()
        self.rules.finish()
        self._writers["events"].write(_drain(self._queues["events"]))  # a stop noted in the last tick
        for writer in self._writers.values():
            writer.close()
        self._tensorboard.close()
        self.meta.update({"status": "stopped" if self.stopped_by and status == "completed" else status,
                          "ended": time.time(), "stopped_by": self.stopped_by})
        write_meta(self.folder, self.meta)

    # -- internals --------------------------------------------------------------------------------

    def _receive(self) -> None:
        """The other ranks' records since the last exchange (every rank calls this together)."""
        if not self.ranks.ddp:
            return
        for steps, system in self.ranks.gathered(None)[1:]:
            self._ranked["steps"].extend(steps)
            self._ranked["system"].extend(system)

    def _wall(self, perf: float) -> float:
        return round(self._wall0 + (perf - self._perf0), 6)

    def _flush_tensors(self) -> None:
        if self.probe and self.probe.backlog:
            self._queues["tensors"].extend(self.probe.flush())

    def _histograms(self, epoch: int) -> None:
        """Weights and last gradients of the trained tensors, once per epoch."""
        if not self.probe:
            return
        try:
            writer = self._tensorboard
            for name, p in self.probe.params:
                writer.add_histogram(f"weights/{name}", p.detach().float().cpu().numpy(), epoch)
                if p.grad is not None:
                    writer.add_histogram(f"gradients/{name}", p.grad.detach().float().cpu().numpy(), epoch)
        except Exception as exc:  # noqa: BLE001 - a by-product must never stop training
            log.warning("profile: TensorBoard histograms failed (%s)", exc)

    def _scalars(self, records: list[dict], events: list[dict]) -> None:
        writer = self._tensorboard
        for r in records:
            writer.add_scalar("loss/train", r["loss"], r["step"])
            for key, tag in (("grad_l2", "gradient_norm"), ("weight_l2", "weight_norm"), ("weight_std", "weight_std"),
                             ("update_ratio", "update_ratio")):
                for name, value in zip(r.get("names", []), r.get(key, [])):
                    if math.isfinite(value := float(value)):  # NaN: no ratio (an all-zero weight), not a number to plot
                        writer.add_scalar(f"{tag}/{name}", value, r["step"])
        for e in events:
            if e.get("event") == "epoch":
                for key in ("train_loss", "val_loss", "val_accuracy", "val_top5"):
                    writer.add_scalar(f"epoch/{key}", e[key], e["epoch"])

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            self._tick()

    def _tick(self, sample: bool = True) -> None:
        """Write what was queued and feed it to the rules (the monitor thread's tick, and the
        training thread's at each epoch's end: one at a time)."""
        with self._ticking:
            self._tick_locked(sample)

    def _tick_locked(self, sample: bool) -> None:
        try:
            batches = {"system": ([self.sampler.sample()] if sample else []) + _drain(self._ranked["system"])}
            batches["steps"] = [_step_record(*entry) for entry in _drain(self._queues["steps"])]
            batches["steps"] += _drain(self._ranked["steps"])
            batches["tensors"] = _drain(self._queues["tensors"])
            batches["events"] = _drain(self._queues["events"])
            for name, records in batches.items():
                self._writers[name].write(records)
                self._writers[name].flush()
            if batches["tensors"] or any(e.get("event") == "epoch" for e in batches["events"]):
                self._scalars(batches["tensors"], batches["events"])
            for name, records in batches.items():
                for rule in self.rules.feed(name, records):
                    self._triggered(rule)
        except Exception as exc:  # noqa: BLE001 - monitoring must never take training down
            if not self._failed:
                log.warning("profile: monitoring failed (%s: %s); training goes on", type(exc).__name__, exc)
                self._failed = True

    def _triggered(self, rule) -> None:
        first = rule.first or {}
        where = f" at step {first['step']}" if first.get("step") is not None else ""
        log.warning("rule %s triggered%s: %s", rule.name, where, first.get("message", ""))
        if rule.action == "stop" and not self.stop_requested:
            self.stop_requested, self.stopped_by = True, rule.name
            self._queues["events"].append({"t": round(time.time(), 3), "event": "stop", "rule": rule.name})
            log.warning("stopping training: rule %s has action stop", rule.name)


def waited(batches: Iterable) -> Iterator[tuple]:
    """Each batch with the clock before and after ``next`` fetched it: the step's data wait."""
    iterator, clock = iter(batches), time.perf_counter
    while True:
        t0 = clock()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, t0, clock()


def _step_record(t: float, phase: str, epoch: int, step: int, data: float, compute: float) -> dict:
    return {"t": t, "phase": phase, "epoch": epoch, "step": step, "data": round(data, 6), "compute": round(compute, 6)}


class RankRecorder(NoHooks):
    """A torchrun rank but 0 on images (DDP): times its steps and samples its machine as the
    Monitor does, and hands the records to rank 0's Monitor at each epoch's end and at the close,
    where they join the profile with this rank's number ("rank"). It writes nothing itself."""

    def __init__(self, ranks: Ranks, interval_ms: int = 500) -> None:
        self.ranks, self.rank = ranks, ranks.rank
        self.sampler = SystemSampler()
        self.interval = max(0.05, interval_ms / 1000)
        self.epoch = 0
        self.counts: dict[str, int] = collections.defaultdict(int)
        self.records: dict[str, list] = {"steps": [], "system": []}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="dogbreed-rank-sampler", daemon=True)
        self._thread.start()

    def steps(self, batches: Iterable, phase: str) -> Iterator:
        step, clock = self.counts[phase], time.perf_counter
        wall0, perf0 = time.time(), clock()
        try:
            for batch, t0, t1 in waited(batches):
                yield batch
                t2 = clock()
                record = _step_record(round(wall0 + (t2 - perf0), 6), phase, self.epoch, step, t1 - t0, t2 - t1)
                with self._lock:
                    self.records["steps"].append({**record, "rank": self.rank})
                step += 1
        finally:
            self.counts[phase] = step

    def epoch_begin(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, row: dict) -> None:
        self._send()

    def close(self, status: str = "completed") -> None:
        self._halt.set()
        self._thread.join(timeout=30)
        if status == "completed":
            self._send()

    def _sample(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                record = {**self.sampler.sample(), "rank": self.rank}
            except Exception as exc:  # noqa: BLE001 - a sample that fails is a gap, never a failed run
                log.debug("rank %d: system sample failed: %s", self.rank, exc)
                continue
            with self._lock:
                self.records["system"].append(record)

    def _send(self) -> None:
        with self._lock:
            steps, system = self.records["steps"], self.records["system"]
            self.records = {"steps": [], "system": []}
        self.ranks.gathered((steps, system))


def _drain(queue: collections.deque) -> list:
    out = []
    while queue:
        out.append(queue.popleft())
    return out
