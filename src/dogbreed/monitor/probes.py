"""What the monitor reads out of a training step: debugger tensors and a profiled window of steps.

Device tensors are kept as they are until ``flush`` (once per epoch, or when enough records wait),
so collecting adds no host sync to the steps themselves.
"""

from __future__ import annotations

import cProfile
import io
import json
import logging
import os
import pstats
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

RELU_SAMPLES = 8  # images of the batch whose ReLU inputs are measured
QUANTILE_SAMPLE = 4096  # gradient elements drawn (fixed positions) for the early steps' p5/p95
FLUSH_EVERY = 32  # records kept on the device before they are copied out


def _trained_block(root: nn.Module, relu_name: str) -> bool:
    """A ReLU whose enclosing module is trained throughout: its statistics can change, and a dead
    unit there is something training can fix (frozen layers only cost time to measure)."""
    parent = root.get_submodule(relu_name.rpartition(".")[0]) if "." in relu_name else root
    params = list(parent.parameters())
    return bool(params) and all(p.requires_grad for p in params)


def _short(v: float) -> float:
    """Six significant digits: what the rules and charts need, a third of the JSON."""
    return float(f"{v:.6g}")


def _values(t: torch.Tensor) -> list[float]:
    return [_short(v) for v in t.float().tolist()]


class TensorProbe:
    """Losses, per-layer gradient and weight statistics and update-to-weight ratios every
    ``interval`` train steps, plus ReLU input statistics and gradient spreads for the first
    ``early_steps`` steps. Frozen parameters (``requires_grad=False``) are never looked at."""

    def __init__(self, module: nn.Module, *, prefix: str = "", interval: int = 10, early_steps: int = 10) -> None:
        self.params = [(prefix + n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in self.params]
        self.relus = [(prefix + n, m) for n, m in module.named_modules() if isinstance(m, nn.ReLU) and _trained_block(module, n)]
        self.interval, self.early_steps = max(0, interval), max(0, early_steps)
        self._losses: list[torch.Tensor] = []
        self._before: list[torch.Tensor] | None = None
        self._record: dict | None = None
        self._records: list[dict] = []
        self._hooks: list = []
        self._relu_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._relu_calls: dict[str, int] = {}
        self._sample_idx: dict[str, torch.Tensor] = {}

    def describe(self) -> dict:
        return {"parameters": self.names, "numel": [p.numel() for _, p in self.params], "relu_modules": len(self.relus),
                "interval": self.interval, "early_steps": self.early_steps}

    def wants(self, step: int) -> bool:
        return step < self.early_steps or (self.interval > 0 and step % self.interval == 0)

    # -- called around each train step ----------------------------------------------------------

    def before_forward(self, step: int) -> None:
        if step < self.early_steps and self.relus and not self._hooks:
            self._hooks = [m.register_forward_pre_hook(self._relu_hook(name)) for name, m in self.relus]
        elif step >= self.early_steps and self._hooks:
            self.remove_hooks()

    def after_backward(self, step: int, epoch: int, t: float, loss: torch.Tensor) -> None:
        if self.interval or step < self.early_steps:  # with interval 0 no later record would average them
            self._losses.append(loss.detach())  # a view, no kernel; averaged at the next record
        if not self.wants(step):
            return
        with torch.no_grad():
            have = [(n, p) for n, p in self.params if p.grad is not None]
            grads = [p.grad for _, p in have]
            weights = [p.detach() for _, p in have]
            record = {"t": t, "step": step, "epoch": epoch, "loss": torch.stack(self._losses).float().mean(),
                      "names": [n for n, _ in have]}
            self._losses = []
            if grads:
                # One pass over each tensor per statistic; these passes are the whole cost of a record.
                numel = torch.tensor([g.numel() for g in grads], dtype=torch.float32, device=grads[0].device)
                record["grad_l2"] = torch.stack(torch._foreach_norm(grads)).float()
                record["grad_abs_mean"] = torch.stack(torch._foreach_norm(grads, 1)).float() / numel
                l2 = torch.stack(torch._foreach_norm(weights)).double()
                mean = torch.stack([w.sum() for w in weights]).double() / numel
                # std from the norm and the mean (sum of squares less n mean^2): no extra pass
                var = (l2.square() - numel * mean.square()).clamp(min=0) / (numel - 1).clamp(min=1)
                record["weight_l2"], record["weight_mean"], record["weight_std"] = l2.float(), mean.float(), var.sqrt().float()
                if step < self.early_steps:
                    record["grad_range"] = torch.stack([self._spread(n, g) for (n, _), g in zip(have, grads)])
                self._before = torch._foreach_mul(weights, 1.0)  # a copy of the trained weights, on record steps only
            if self._relu_stats:
                record["relu"] = self._relu_stats
                self._relu_stats, self._relu_calls = {}, {}
            self._record = record

    def after_step(self) -> None:
        if self._record is None:
            return
        record, self._record = self._record, None
        if self._before is not None:
            with torch.no_grad():
                named = set(record["names"])
                after = [p.detach() for n, p in self.params if n in named]
                torch._foreach_sub_(self._before, after)  # in place: the copy becomes the update
                moved = self._before
                norms = record["weight_l2"]  # a weight that is all zeros (a fresh bias) has no ratio: NaN
                ratio = torch.stack(torch._foreach_norm(moved)).float() / norms
                record["update_ratio"] = torch.where(norms > 0, ratio, torch.full_like(ratio, float("nan")))
            self._before = None
        self._records.append(record)

    @property
    def backlog(self) -> int:
        return len(self._records)

    def flush(self) -> list[dict]:
        """The waiting records as plain numbers (the one host sync, paid per flush)."""
        out = []
        for record in self._records:
            plain = {"t": record["t"], "step": record["step"], "epoch": record["epoch"],
                     "loss": _short(float(record["loss"]))}
            if "grad_l2" in record:
                plain["names"] = record["names"]
                for key in ("grad_l2", "grad_abs_mean", "weight_l2", "weight_mean", "weight_std", "grad_range", "update_ratio"):
                    if key in record:
                        plain[key] = _values(record[key])
            if "relu" in record:
                plain["relu"] = {name: {"var": _short(float(var)), "active": [round(v, 4) for v in active.tolist()]}
                                 for name, (var, active) in record["relu"].items()}
            out.append(plain)
        self._records = []
        return out

    def remove_hooks(self) -> None:
        """Between train phases: evaluation forwards must not count as ReLU statistics."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._relu_stats, self._relu_calls = {}, {}

    # -- internals -------------------------------------------------------------------------------

    def _spread(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """p95 - p5 of a gradient, from a fixed sample of its elements for large tensors."""
        flat = grad.detach().reshape(-1).float()
        if flat.numel() > QUANTILE_SAMPLE:
            if name not in self._sample_idx:
                gen = torch.Generator().manual_seed(0)
                self._sample_idx[name] = torch.randperm(flat.numel(), generator=gen)[:QUANTILE_SAMPLE].to(flat.device)
            flat = flat[self._sample_idx[name]]
        q = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device))
        return q[1] - q[0]

    def _relu_hook(self, name: str):
        def hook(module, inputs):
            x = inputs[0].detach()[:RELU_SAMPLES]  # a few images tell the activity; all of them cost seconds
            calls = self._relu_calls.get(name, 0)  # torchvision reuses one ReLU module several times per block
            self._relu_calls[name] = calls + 1
            # Activity per unit (channel): the share of its inputs above zero, over batch and space.
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
            self._relu_stats[f"{name}#{calls}"] = (x.float().var(), (x > 0).float().mean(dim=dims))
        return hook


@contextmanager
def _native_stderr_muted():
    """Kineto prints start/stop lines straight to file descriptor 2 at every profiler start and stop,
    whatever its log level; they would interleave with the training log, so the descriptor points
    at /dev/null for the few milliseconds of those two calls."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TraceWindow:
    """A torch.profiler trace (Chrome trace JSON: Perfetto, chrome://tracing, TensorBoard) and a
    cProfile of train steps ``[start, start + steps)``."""

    def __init__(self, folder: Path, start: int, steps: int, device: torch.device) -> None:
        self.folder, self.start, self.end = folder, start, start + steps
        self.enabled = steps > 0
        self.device = device
        self._profiler = None
        self._cprofile: cProfile.Profile | None = None

    @property
    def active(self) -> bool:
        return self._profiler is not None

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.start and not self.active:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            with _native_stderr_muted():
                self._profiler.__enter__()
            self._cprofile = cProfile.Profile()
            self._cprofile.enable()

    def after_step(self, step: int) -> dict | None:
        if self.active and step + 1 >= self.end:
            return self.stop(step)
        return None

    def stop(self, last_step: int) -> dict | None:
        """Ends the window (early if the phase ends first); returns what was written."""
        if not self.active:
            return None
        self._cprofile.disable()
        with _native_stderr_muted():
            self._profiler.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        trace = self.folder / "trace.json"
        self._profiler.export_chrome_trace(str(trace))
        self._cprofile.dump_stats(str(self.folder / "cprofile.prof"))
        text = io.StringIO()
        pstats.Stats(self._cprofile, stream=text).sort_stats("cumulative").print_stats(40)
        (self.folder / "cprofile.txt").write_text(text.getvalue(), encoding="utf-8")
        # From the trace file: torch's key_averages() takes seconds, and longer every session in a process.
        (self.folder / "ops.txt").write_text(format_ops(top_ops(trace)), encoding="utf-8")
        self._profiler = self._cprofile = None
        self.enabled = False
        log.info("profiled train steps %d-%d: %s", self.start, last_step, trace)
        return {"event": "trace", "first_step": self.start, "last_step": last_step,
                "files": ["trace/trace.json", "trace/cprofile.prof", "trace/cprofile.txt", "trace/ops.txt"]}


def top_ops(trace: Path, limit: int = 25) -> list[dict]:
    """The operators that took the most time in a Chrome trace (inclusive time, summed per name)."""
    totals: dict[str, list[float]] = {}
    for event in json.loads(trace.read_text(encoding="utf-8")).get("traceEvents", []):
        if event.get("cat") in ("cpu_op", "kernel") and "dur" in event:
            entry = totals.setdefault(f"{event['cat']}:{event['name']}", [0, 0.0])
            entry[0] += 1
            entry[1] += event["dur"]
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:limit]
    return [{"op": name.split(":", 1)[1], "kind": "GPU kernel" if name.startswith("kernel") else "CPU op",
             "calls": calls, "total_ms": round(us / 1000, 3)} for name, (calls, us) in ranked]


def format_ops(rows: list[dict]) -> str:
    lines = [f"{'operator':<48} {'kind':<10} {'calls':>7} {'total ms':>10}"]
    lines += [f"{r['op'][:48]:<48} {r['kind']:<10} {r['calls']:>7} {r['total_ms']:>10.3f}" for r in rows]
    return "\n".join(lines) + "\n"
