"""``dogbreed export``: an artifact variant with faster ways to run the same network beside
model.pth: a TorchScript ``model.pt``, an ONNX ``model.onnx`` and its int8 quantization
``model.int8.onnx`` (ONNX Runtime's static QDQ quantization, per channel, calibrated on the
validation images).

With ``--data DIR`` every variant, and bf16 where the CPU runs it natively, is run on the validation split against fp32 and the
agreement stored in model.json (``backends``); bf16 and int8 are used only where it passed the
gate (``runtime/backends.py``). ``dogbreed serve --backend auto`` then times what it finds and
runs the fastest; SageMaker's PyTorch container loads ``model.pt`` as TorchScript when no custom
code is given.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dogbreed import gates
from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact, pack, write_meta
from dogbreed.data.layout import model_index, scan
from dogbreed.errors import DogbreedError
from dogbreed.flags import option
from dogbreed.onnx_export import onnx_export
from dogbreed.runtime import backends, loading
from dogbreed.runtime.loading import EXPORT_FORMATS, LoadedModel

log = logging.getLogger(__name__)
FORMATS = tuple(EXPORT_FORMATS)


def gate_text(gate: dict = backends.GATE) -> str:
    """A gate as ``--gate`` spells it: ``0.99,0.995``."""
    return f"{gate['top1']:g},{gate['top5']:g}"


@dataclass
class ExportOptions:
    """``dogbreed export``'s settings (its flags are generated from these fields)."""

    format: str = option("torchscript", f"{', '.join(FORMATS)}, a comma-separated list of them, or all")
    data: str | None = option(None, "the data set the model was trained on: int8 calibrates on its valid split, and "
                                    "every backend is checked on it (needed for int8; default: none)", metavar="DIR")
    calibration_images: int = option(128, "validation images int8's ranges are measured on")
    gate: str | None = option(None, "the least top-1 and top-5 agreement with fp32 on the validation images for bf16 "
                                    f"and int8 to be used (default: {gate_text()})", metavar="TOP1,TOP5")
    out: str | None = option(None, "output path (default: beside the input, named model-FORMATS.tar.gz)")


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``"onnx,int8"``, ``"all"`` or a list -> the formats, in FORMATS order; a bad one is one line."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if "all" in names:
        return list(FORMATS)
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise DogbreedError(f"export format {', '.join(bad) or '(none)'!r} is not supported; choose from: "
                            f"{', '.join(FORMATS)}, or all")
    return [n for n in FORMATS if n in names]


def parse_gate(text: str | Sequence[float] | None) -> dict:
    """``"0.99,0.995"`` (or two numbers) -> the gate bf16 and int8 must pass; a bad one is one line."""
    if text is None:
        return dict(backends.GATE)
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        values = []
    if len(values) != 2 or not all(0 < v <= 1 for v in values):
        raise DogbreedError(f"--gate {text!r} is not two agreements in (0, 1], top-1 then top-5: e.g. {gate_text()}")
    return {"top1": values[0], "top5": values[1]}


def export(artifact: str | os.PathLike, formats: str | Sequence[str] = ExportOptions.format,
           out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
           calibration_images: int = ExportOptions.calibration_images,
           gate: str | Sequence[float] | None = None, progress: bool = True) -> Path:
    """Write ``out``: ``artifact`` with ``formats`` beside model.pth and, with ``data``, every backend's
    agreement with fp32 on its validation images (bf16 and int8 judged against ``gate``)."""
    formats = parse_formats(formats)
    gate = parse_gate(gate)
    if "int8" in formats and not data:
        raise DogbreedError("--format int8 calibrates on the validation images and checks its accuracy on them: "
                            "pass --data DIR (the data set the model was trained on)")
    if calibration_images < 1:
        raise DogbreedError("--calibration-images must be at least 1")
    artifact = Path(artifact)
    if not artifact.exists():
        raise DogbreedError(f"model artifact {artifact} does not exist")
    name = artifact.name.removesuffix(".tar.gz")
    for suffix in ("all", *reversed(FORMATS)):  # an export of an export: model-onnx, not model-torchscript-onnx
        name = name.removesuffix(f"-{suffix}")
    suffix = "all" if formats == list(FORMATS) else "-".join(formats)
    out = Path(out) if out else artifact.with_name(f"{name}-{suffix}.tar.gz")
    if out.resolve() == artifact.resolve():
        raise DogbreedError(f"{out} is the artifact being exported, which the export would overwrite; "
                            f"pass --out with another path")
    layout = scan(data) if data else None  # a bad --data is one line before any work
    with tempfile.TemporaryDirectory(prefix="dogbreed-export-") as tmp:
        if artifact.is_dir():  # an unpacked artifact, as predict and serve take
            shutil.copytree(artifact, tmp, dirs_exist_ok=True)
        else:
            safe_extract_tar(artifact, tmp)
        loaded = load_artifact(tmp, "cpu", name=artifact)
        if layout:  # calibrated and gated on the breeds it answers, as evaluate measures it
            model_index(layout, loaded.labels, data)
        pixels = gates.validation_pixels(loaded, [path for path, _ in layout.splits["valid"]], progress) if layout else None
        size = loaded.preset.crop_size
        model = loaded.model.eval().to(memory_format=torch.contiguous_format)
        example = torch.zeros(2, 3, size, size)
        for fmt in formats:
            started = time.perf_counter()
            path = os.path.join(tmp, EXPORT_FORMATS[fmt])
            if fmt == "torchscript":
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": SageMaker still loads it
                    # forward (the logits alone, what SageMaker's default handler calls), the pass that
                    # also gives the embedding the "not a dog" score reads, and the one that adds the class
                    # activation maps (where the backbone has them)
                    methods = {"forward": example, "logits_and_features": example}
                    if getattr(model, "class_maps", None) is not None:
                        methods["class_maps"] = example
                    traced = torch.jit.trace_module(model, methods)
                    traced.save(path)
            elif fmt == "onnx":
                _export_onnx(model, example, path)
            else:
                _quantize(model, example, loaded, pixels, calibration_images, path, tmp)
            log.info("wrote %s in %.1fs", EXPORT_FORMATS[fmt], time.perf_counter() - started)
        meta = dict(loaded.meta, exports=sorted(set(loaded.meta.get("exports", [])) | set(formats)))
        if pixels is not None:
            meta["gate"] = gate
            checked = (["bf16"] if backends.native_bf16(torch.device("cpu")) else []) + formats
            meta["backends"] = {**meta.get("backends", {}), **gates.agreements(tmp, loaded, pixels, checked, gate, progress)}
        write_meta(tmp, meta)
        return pack(tmp, out)


class _Outputs(torch.nn.Module):
    """The graph ONNX gets: the logits, the embedding and, where the backbone has them, the class
    activation maps, as its outputs in that order (older readers take the first ones)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.maps = getattr(model, "class_maps", None) is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.class_maps(x) if self.maps else self.model.logits_and_features(x)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    graph = _Outputs(model).eval()
    onnx_export(graph, example, path, ["logits", "features"] + ["class_maps"] * graph.maps)


def _quantize(model: torch.nn.Module, example: torch.Tensor, loaded: LoadedModel, pixels: list[torch.Tensor],
              calibration_images: int, path: str, tmp: str) -> None:
    """ONNX Runtime's static int8 quantization (QDQ, per-channel weights, uint8 activations with the
    reduced range that keeps AVX2's int8 products from saturating) of the fp32 ONNX graph, its
    activation ranges measured on up to ``calibration_images`` validation images spread over the split."""
    # imported here: it takes most of a second, and only int8 needs it
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work = tempfile.mkdtemp(prefix="quantize-", dir=tmp)
    source, prepared = os.path.join(tmp, loading.ONNX_FILE), os.path.join(work, "prepared.onnx")
    if not os.path.exists(source):  # not exported with it (formats run in order: onnx before int8)
        source = os.path.join(work, "fp32.onnx")
        _export_onnx(model, example, source)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(source, prepared)  # shape inference and folding, as ONNX Runtime advises before quantizing
    except Exception as exc:  # it is an optimisation: quantize the graph as exported instead
        log.info("int8: the graph's pre-processing failed (%s); quantizing it as exported", exc)
        prepared = source
    step = max(1, len(pixels) // calibration_images)
    chosen = pixels[::step][:calibration_images]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(chosen), gates.BATCH))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                return None
            images = loaded.preset.normalize(torch.stack(chosen[start:start + gates.BATCH]))
            return {"images": images.contiguous().numpy()}

    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(prepared, path, Batches(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        # (the min-max calibrator keeps two numbers per tensor and batch; its CalibMaxIntermediateOutputs
        # option would drop the batches collected before each flush, and fail when none are left)
    shutil.rmtree(work)
