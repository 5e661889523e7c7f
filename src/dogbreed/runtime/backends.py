"""Which way to run an artifact's network: the backends, the accuracy gate the reduced-precision
ones must have passed, and ``auto``, which times every usable backend where it runs and takes the
fastest.

    eager        model.pth in PyTorch, fp32 (every artifact has it: the fallback)
    bf16         model.pth in PyTorch under bf16 autocast
    torchscript  model.pt, traced            (dogbreed export --format torchscript)
    onnx         model.onnx in ONNX Runtime  (dogbreed export --format onnx)
    int8         model.int8.onnx: static int8 quantization calibrated on the validation images
                 (dogbreed export --format int8 --data DIR)

bf16 runs only where the hardware does it natively (:func:`native_bf16`, which training's precision
asks too). bf16 and int8 change the arithmetic, so they are used only where model.json records that
they passed the gate: on the validation images their top-1 agreed with fp32's on at least 99% and their
top-5 on at least 99.5% (``dogbreed export --data`` measures and stores it). How fast each one is
depends on the CPU (AVX2, AVX-512, VNNI, AMX give very different orders), so nothing here assumes
an order: ``auto`` measures.

Shipped verbatim inside every artifact (``code/backends.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import torch

try:
    from . import pipeline
    from .loading import BACKENDS, LoadedModel, ModelLoadError, load_model_dir
except ImportError:  # loaded as a top-level module from an extracted artifact's code/ folder
    import pipeline  # type: ignore[no-redef]
    from loading import BACKENDS, LoadedModel, ModelLoadError, load_model_dir  # type: ignore[no-redef]

AUTO = "auto"
CHOICES = (AUTO, *BACKENDS)
GATED = ("bf16", "int8")  # backends whose answers may differ from fp32's, so they must pass the gate
GATE = {"top1": 0.99, "top5": 0.995}  # the least agreement with fp32 on the validation images
CPU_ONLY = ("onnx", "int8")  # ONNX Runtime's CPU provider
EXPORTED = tuple(name for name in BACKENDS if BACKENDS[name] != BACKENDS["eager"])  # their own file
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_BUDGET_S = 10.0  # how long auto may spend choosing, in all: loading, warming up and timing candidates
# A job of a known size (``images``) spends at most this share of what eager would take on it choosing:
# the best the race can win is part of that time, so a small job is not made to wait on one.
RACE_SHARE = 0.25
WARM_UPS = 2  # untimed passes first: they build kernels (oneDNN's bf16 ones per shape) and ONNX Runtime's arenas
# TorchScript's profiling executor runs a graph instrumented for its first runs (1 by default), then
# builds the optimised plan on the next one: those runs come on top of the warm-ups every backend
# gets, at each batch size, so that no timed pass pays for the JIT's work.
JIT_WARM_UPS = getattr(torch._C, "_jit_get_num_profiled_runs", lambda: 1)() + WARM_UPS
MIN_PASSES = 2  # timed passes per candidate and batch size, however slow
MAX_PASSES = 50
BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16", "bf16")  # x86's two, Arm's; as torch.cpu.get_capabilities names them
Input = TypeVar("Input")


def agreement(reference: torch.Tensor, logits: torch.Tensor, k: int = 5) -> dict:
    """How closely ``logits`` follow ``reference`` (fp32's), image by image: the share whose top-1
    is the same, and the share of fp32's top-k breeds found in the other's top-k (mean). The key
    stays ``top5`` when a model has fewer than five classes (k is then every class)."""
    k = min(k, reference.shape[1])
    top1 = (reference.argmax(1) == logits.argmax(1)).float().mean().item()
    ref_k, other_k = reference.topk(k, dim=1).indices, logits.topk(k, dim=1).indices
    found = (ref_k.unsqueeze(2) == other_k.unsqueeze(1)).any(dim=2).float().mean().item()
    return {"top1": round(top1, 6), "top5": round(found, 6)}


def passes(record: dict | None, gate: dict | None = None) -> bool:
    """Whether a measured agreement (model.json's ``backends[NAME]``) clears the gate."""
    gate = gate or GATE
    return bool(record) and all(record.get(key, 0.0) >= floor for key, floor in gate.items())


NOT_EXPORTED = "not exported"
NOT_MEASURED = "not measured against fp32"
EXPORT_HINT = "`dogbreed export MODEL --format all --data DIR` adds them"  # for the two reasons above


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: a CPU with AVX512-BF16 or AMX (x86) or the BF16
    extension (Arm), a GPU that torch says supports it. Elsewhere bf16 is emulated and slower than
    fp32: training keeps fp32 there and ``auto`` does not time bf16. Training and serving both ask here."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16()


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions, from torch's public CPU capabilities. The torch an
    artifact meets in an older SageMaker container may predate them: there, oneDNN's private check,
    which also says yes on AVX-512 CPUs without them (oneDNN emulates bf16 there)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(capabilities().get(name) is True for name in BF16_INSTRUCTIONS)


def unusable(model_dir: str, meta: dict, name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run this artifact here, in a few words; None if it can."""
    if name in CPU_ONLY and device.type != "cpu":
        return "CPU only"
    if name == "bf16" and not native_bf16(device):
        return f"no native bf16 on this {device.type.upper()}"
    if name in EXPORTED and not os.path.exists(os.path.join(model_dir, BACKENDS[name])):
        return NOT_EXPORTED
    if name in CPU_ONLY:
        try:  # a dogbreed dependency, but not the artifact's (code/requirements.txt): a SageMaker
            import onnxruntime  # noqa: F401 - container may lack it, and then serves on the others
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
    if name in GATED:
        record = meta.get("backends", {}).get(name)
        if record is None:
            return NOT_MEASURED
        if not passes(record, meta.get("gate")):
            gate = meta.get("gate") or GATE
            return (f"failed its gate (top-1 {record.get('top1', 0):.1%}, top-5 {record.get('top5', 0):.1%}; "
                    f"needs {gate['top1']:.1%}, {gate['top5']:.1%})")
    return None


class OutOfTime(Exception):
    """A candidate that reached the race's deadline before its least timed passes: unmeasured."""


def warm_ups(name: str) -> int:
    """Untimed passes that candidate ``name`` makes at each batch size before it is timed."""
    return JIT_WARM_UPS if name == "torchscript" else WARM_UPS


def timed(forward: Callable[[Input], object], inputs: Mapping[int, Input], seconds: float = 0.0, *,
          warm: int = WARM_UPS, deadline: float | None = None) -> dict[int, float]:
    """Images per second of ``forward`` on each of ``inputs`` (batch size -> a batch that size):
    ``warm`` untimed passes, then timed ones (at least :data:`MIN_PASSES`, at most
    :data:`MAX_PASSES`); the median. How every race times.

    ``seconds`` is what it may spend in all, warm-ups included, shared evenly over the batch sizes
    (what one leaves goes to the next); only the least passes may take longer. ``deadline`` (a
    ``time.perf_counter()`` reading) is a hard stop: no pass starts after it, so it is overrun by one
    pass at most, and a batch size without its least timed passes by then raises :class:`OutOfTime`."""
    rates = {}
    end = time.perf_counter() + seconds
    for i, (batch, example) in enumerate(inputs.items()):
        until = time.perf_counter() + max(0.0, end - time.perf_counter()) / (len(inputs) - i)
        for _ in range(warm):
            if _past(deadline):
                raise OutOfTime
            forward(example)
        times: list[float] = []
        while len(times) < MIN_PASSES or (time.perf_counter() < until and len(times) < MAX_PASSES):
            if _past(deadline):
                if len(times) < MIN_PASSES:
                    raise OutOfTime
                break
            started = time.perf_counter()
            forward(example)
            times.append(time.perf_counter() - started)
        rates[batch] = batch / statistics.median(times)
    return rates


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


@dataclass
class Selection:
    """A backend race and what it ended up with, and why: the server's ``auto`` (or a forced
    backend) and the embedding cache's choice alike."""

    asked: str
    chosen: str
    measured: dict[str, dict[int, float]] = field(default_factory=dict)  # backend -> batch size -> images/s
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not a candidate
    seconds: float = 0.0  # spent choosing: timing and, in the server's race, loading the candidates too
    # The caller runs at whichever batch size suits the winner (the embedder's chunks): a candidate is
    # as fast as its best rate. Otherwise (a server takes the batches that come) its rate at the largest.
    any_batch: bool = False

    def measure(self, name: str, forward: Callable[[Input], object], inputs: Mapping[int, Input],
                seconds: float = 0.0, deadline: float | None = None) -> bool:
        """Time candidate ``name`` (:func:`timed`, after :func:`warm_ups` of its own); it becomes
        ``chosen`` if it is faster than every one timed before it (a tie keeps the earlier). Whether
        it did. :class:`OutOfTime` where ``deadline`` came first."""
        started = time.perf_counter()
        try:
            rates = timed(forward, inputs, seconds, warm=warm_ups(name), deadline=deadline)
        finally:
            self.seconds += time.perf_counter() - started
        return self.record(name, rates)

    def record(self, name: str, rates: dict[int, float], seconds: float = 0.0) -> bool:
        """Enter candidate ``name`` with its images per second at each batch size, timed as
        :func:`timed` does (on the work itself, say); whether it is now ``chosen``."""
        self.measured[name] = rates
        self.seconds += seconds
        if all(self.speed(name) > self.speed(other) for other in self.measured if other != name):
            self.chosen = name
        return self.chosen == name

    def batch(self, name: str) -> int:
        """The batch size that measures candidate ``name``: its fastest, or the largest."""
        rates = self.measured[name]
        return max(rates, key=rates.__getitem__) if self.any_batch else max(rates)

    def speed(self, name: str) -> float:
        """Candidate ``name``'s images per second, as the race compares them."""
        return self.measured[name][self.batch(name)]

    def line(self) -> str:
        """One line: the backend, what was measured (img/s per batch size, fastest first), and what
        was left out and why."""
        line = f"backend {self.chosen}"
        if self.asked != self.chosen:
            line += " (auto)" if self.asked == AUTO else f" (asked for {self.asked})"
        if self.measured:
            sizes = sorted({b for rates in self.measured.values() for b in rates})
            ranked = sorted(self.measured.items(), key=lambda kv: -kv[1][sizes[-1]])
            rates = ", ".join(f"{name} {'/'.join(f'{rates[b]:.1f}' for b in sizes)}" for name, rates in ranked)
            line += f"; img/s at batch {'/'.join(map(str, sizes))}: {rates} ({self.seconds:.1f}s)"
        if self.skipped:
            line += "; not used: " + ", ".join(f"{name} {why}" for name, why in self.skipped.items())
            if {NOT_EXPORTED, NOT_MEASURED} & set(self.skipped.values()):
                line += f" ({EXPORT_HINT})"
        return line

    def to_dict(self) -> dict:
        return {"asked": self.asked, "chosen": self.chosen, "seconds": round(self.seconds, 2),
                "measured": {name: {str(b): round(r, 2) for b, r in rates.items()} for name, rates in self.measured.items()},
                "skipped": self.skipped}


def example_pixels(model: LoadedModel, batch_sizes: Sequence[int]) -> dict[int, list[torch.Tensor]]:
    """Random uint8 images, the same each time, at each batch size: what the inference path takes."""
    size = model.preset.crop_size
    generator = torch.Generator().manual_seed(0)
    return {batch: list(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator))
            for batch in batch_sizes}


def throughput(model: LoadedModel, batch_sizes: Sequence[int], seconds: float) -> dict[int, float]:
    """Images per second of the inference path's forward pass at each batch size (:func:`timed`)."""
    return timed(partial(pipeline.forward, model), example_pixels(model, batch_sizes), seconds)


def select(model_dir: str, backend: str = AUTO, device: str | torch.device | None = None, *,
           batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, budget_s: float = DEFAULT_BUDGET_S,
           images: int | None = None, warn: Callable[[str], None] | None = None) -> tuple[LoadedModel, Selection]:
    """Load the artifact on the backend asked for. ``auto`` times every backend that can run it here
    (its file is there, its runtime installed, its gate passed) at ``batch_sizes`` and keeps the one
    with the most images per second at the largest batch size, all within ``budget_s`` seconds from
    the start (:func:`_race`); ``images``, where the job's size is known (a server's is not), caps
    that at :data:`RACE_SHARE` of eager's time for them. A backend that is forced but cannot run is
    one line to ``warn``, and the others compete as under ``auto``: the model always loads, on eager
    at worst. A damaged file is a ModelLoadError."""
    if backend not in CHOICES:
        raise ModelLoadError(model_dir, f"backend {backend!r} is not available; choose one of: {', '.join(CHOICES)}")
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eager = load_model_dir(model_dir, device, "eager", fused=True)  # checks the artifact; the fallback
    loaded_s = time.perf_counter() - started
    selection = Selection(backend, "eager")
    if backend != AUTO:
        why = unusable(model_dir, eager.meta, backend, device)
        if why is None:
            selection.chosen = backend
            return (eager if backend == "eager" else load_model_dir(model_dir, device, backend, fused=True)), selection
        selection.skipped[backend] = why
        if warn:
            warn(f"backend {backend} cannot run this model: {why}; the fastest of the others is used")
    for name in BACKENDS:
        if name not in selection.skipped and (why := unusable(model_dir, eager.meta, name, device)) is not None:
            selection.skipped[name] = why
    return _race(model_dir, device, eager, selection, batch_sizes, budget_s, started, loaded_s, images)


def out_of_time(budget_s: float) -> str:
    """Why a candidate was not timed: the race's budget was spent (a :attr:`Selection.skipped` reason)."""
    return f"not timed within the {budget_s:g}s budget"


def _race(model_dir: str, device: torch.device, eager: LoadedModel, selection: Selection, batch_sizes: Sequence[int],
          budget_s: float, started: float, loaded_s: float, images: int | None = None) -> tuple[LoadedModel, Selection]:
    """Time the candidates in turn, each loading, warming up and timing within an even share of what
    is left of ``budget_s`` since ``started``. A candidate starts only if what is left covers what the
    costliest one so far needed to load and make its least passes (``loaded_s``: eager's load), and
    no pass starts after the deadline, so the race overruns it by one pass at most. With ``images``,
    eager (the first) makes only its least passes, and the deadline then comes no later than
    :data:`RACE_SHARE` of eager's time for them after ``started``. The candidates it could not time
    are ``skipped`` as :func:`out_of_time`, or as too little work to pay for timing them."""
    candidates = [name for name in BACKENDS if name not in selection.skipped]
    if len(candidates) == 1:  # eager alone: nothing to time
        return eager, selection
    deadline = started + budget_s
    untimed = out_of_time(budget_s)  # what a candidate the race had no time for is skipped as
    best, pixels = eager, example_pixels(eager, batch_sizes)
    least = 0.0  # seconds the costliest candidate so far took to load, warm up and make its least passes
    for i, name in enumerate(candidates):
        begun = time.perf_counter()
        if deadline - begun <= least:
            continue
        model = eager if name == "eager" else load_model_dir(model_dir, device, name, fused=True)
        load_s = loaded_s if name == "eager" else time.perf_counter() - begun
        share = (deadline - begun) / (len(candidates) - i) - (time.perf_counter() - begun)
        if name == "eager" and images is not None:  # its least passes: enough to know what the job is worth
            share = 0.0
        try:
            if selection.measure(name, partial(pipeline.forward, model), pixels, max(0.0, share), deadline):
                best = model
        except OutOfTime:
            continue
        passes = (warm_ups(name) + MIN_PASSES) * sum(b / rate for b, rate in selection.measured[name].items())
        least = max(least, load_s + passes)
        if name == "eager" and images is not None:
            work_s = images / selection.speed("eager")
            if started + RACE_SHARE * work_s < deadline:
                deadline = started + RACE_SHARE * work_s
                untimed = f"not timed: {images} images are ~{work_s:.0f}s of eager work, too few to pay for a longer race"
    for name in candidates:
        if name not in selection.measured and name != selection.chosen:  # eager is the fallback, timed or not
            selection.skipped[name] = untimed
    selection.seconds = time.perf_counter() - started
    return best, selection
