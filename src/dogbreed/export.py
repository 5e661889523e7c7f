"""``dogbreed export``: an artifact variant with a TorchScript (``model.pt``) or ONNX
(``model.onnx``) model beside model.pth.

SageMaker's PyTorch container loads ``model.pt`` as TorchScript when no custom code is given;
``dogbreed serve --backend torchscript|onnx`` runs either.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact, pack
from dogbreed.errors import DogbreedError
from dogbreed.runtime.loading import MODEL_FILE, ONNX_FILE, TORCHSCRIPT_FILE

FORMATS = ("torchscript", "onnx")


def export(artifact: str | os.PathLike, fmt: str = "torchscript", out: str | os.PathLike | None = None) -> Path:
    if fmt not in FORMATS:
        raise DogbreedError(f"export format {fmt!r} is not supported; choose one of: {', '.join(FORMATS)}")
    artifact = Path(artifact)
    if not artifact.exists():
        raise DogbreedError(f"model artifact {artifact} does not exist")
    name = artifact.name.removesuffix(".tar.gz")
    for suffix in FORMATS:  # an export of an export: model-onnx, not model-torchscript-onnx
        name = name.removesuffix(f"-{suffix}")
    out = Path(out) if out else artifact.with_name(f"{name}-{fmt}.tar.gz")
    if out.resolve() == artifact.resolve():
        raise DogbreedError(f"{out} is the artifact being exported, which the export would overwrite; "
                            f"pass --out with another path")
    with tempfile.TemporaryDirectory(prefix="dogbreed-export-") as tmp:
        if artifact.is_dir():  # an unpacked artifact, as predict and serve take
            shutil.copytree(artifact, tmp, dirs_exist_ok=True)
        else:
            safe_extract_tar(artifact, tmp)
        loaded = load_artifact(tmp, "cpu", name=artifact)
        size = loaded.preset.crop_size
        model = loaded.model.eval().to(memory_format=torch.contiguous_format)
        example = torch.zeros(2, 3, size, size)
        if fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": SageMaker still loads it
                # forward (the logits alone, what SageMaker's default handler calls) and the pass that
                # also gives the embedding the "not a dog" score reads
                traced = torch.jit.trace_module(model, {"forward": example, "logits_and_features": example})
                traced.save(os.path.join(tmp, TORCHSCRIPT_FILE))
        else:
            _export_onnx(model, example, os.path.join(tmp, ONNX_FILE))
        meta = dict(loaded.meta, exports=sorted(set(loaded.meta.get("exports", [])) | {fmt}))
        Path(tmp, MODEL_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return pack(tmp, out)


class _BothOutputs(torch.nn.Module):
    """The graph ONNX gets: the logits and the embedding, as two outputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.logits_and_features(x)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise DogbreedError("ONNX export needs the onnx, onnxscript and onnxruntime packages: pip install 'dogbreed[onnx]'") from None
    batch = torch.export.Dim("batch", min=1, max=1024)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's step-by-step chatter
        program = torch.onnx.export(_BothOutputs(model).eval(), (example,), input_names=["images"],
                                    output_names=["logits", "features"],
                                    dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    program.save(path)
