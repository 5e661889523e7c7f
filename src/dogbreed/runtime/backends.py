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
DEFAULT_BUDGET_S = 10.0  # how long auto may spend timing, in all
WARM_UPS = 2  # untimed passes first: they build kernels (oneDNN's bf16 ones per shape) and ONNX Runtime's arenas
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


def timed(forward: Callable[[Input], object], inputs: Mapping[int, Input], seconds: float = 0.0) -> dict[int, float]:
    """Images per second of ``forward`` on each of ``inputs`` (batch size -> a batch that size):
    :data:`WARM_UPS` untimed passes, then timed ones for about ``seconds`` in all (at least
    :data:`MIN_PASSES`, at most :data:`MAX_PASSES` each); the median. How every race times."""
    rates = {}
    for batch, example in inputs.items():
        for _ in range(WARM_UPS):
            forward(example)
        times: list[float] = []
        deadline = time.perf_counter() + seconds / len(inputs)
        while len(times) < MIN_PASSES or (time.perf_counter() < deadline and len(times) < MAX_PASSES):
            started = time.perf_counter()
            forward(example)
            times.append(time.perf_counter() - started)
        rates[batch] = batch / statistics.median(times)
    return rates


@dataclass
class Selection:
    """A backend race and what it ended up with, and why: the server's ``auto`` (or a forced
    backend) and the embedding cache's choice alike."""

    asked: str
    chosen: str
    measured: dict[str, dict[int, float]] = field(default_factory=dict)  # backend -> batch size -> images/s
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not a candidate
    seconds: float = 0.0  # spent timing
    # The caller runs at whichever batch size suits the winner (the embedder's chunks): a candidate is
    # as fast as its best rate. Otherwise (a server takes the batches that come) its rate at the largest.
    any_batch: bool = False

    def measure(self, name: str, forward: Callable[[Input], object], inputs: Mapping[int, Input],
                seconds: float = 0.0) -> bool:
        """Time candidate ``name`` (:func:`timed`); it becomes ``chosen`` if it is faster than every
        one timed before it (a tie keeps the earlier). Whether it did."""
        started = time.perf_counter()
        rates = timed(forward, inputs, seconds)
        return self.record(name, rates, time.perf_counter() - started)

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
           warn: Callable[[str], None] | None = None) -> tuple[LoadedModel, Selection]:
    """Load the artifact on the backend asked for. ``auto`` times every backend that can run it here
    (its file is there, its runtime installed, its gate passed) at ``batch_sizes`` within about
    ``budget_s`` seconds and keeps the one with the most images per second at the largest batch
    size. A backend that is forced but cannot run is one line to ``warn``, and the others compete as
    under ``auto``: the model always loads, on eager at worst. A damaged file is a ModelLoadError."""
    if backend not in CHOICES:
        raise ModelLoadError(model_dir, f"backend {backend!r} is not available; choose one of: {', '.join(CHOICES)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eager = load_model_dir(model_dir, device, "eager")  # checks the artifact; the fallback
    selection = Selection(backend, "eager")
    if backend != AUTO:
        why = unusable(model_dir, eager.meta, backend, device)
        if why is None:
            selection.chosen = backend
            return (eager if backend == "eager" else load_model_dir(model_dir, device, backend)), selection
        selection.skipped[backend] = why
        if warn:
            warn(f"backend {backend} cannot run this model: {why}; the fastest of the others is used")
    for name in BACKENDS:
        if name not in selection.skipped and (why := unusable(model_dir, eager.meta, name, device)) is not None:
            selection.skipped[name] = why
    return _race(model_dir, device, eager, selection, batch_sizes, budget_s)


def _race(model_dir: str, device: torch.device, eager: LoadedModel, selection: Selection,
          batch_sizes: Sequence[int], budget_s: float) -> tuple[LoadedModel, Selection]:
    candidates = [name for name in BACKENDS if name not in selection.skipped]
    if len(candidates) == 1:  # eager alone: nothing to time
        return eager, selection
    best, pixels = eager, example_pixels(eager, batch_sizes)
    for name in candidates:
        model = eager if name == "eager" else load_model_dir(model_dir, device, name)
        if selection.measure(name, partial(pipeline.forward, model), pixels, budget_s / len(candidates)):
            best = model
    return best, selection
