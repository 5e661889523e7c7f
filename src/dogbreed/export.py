"""``dogbreed export``: an artifact variant with a TorchScript model (``model.pt``) beside model.pth.

SageMaker's PyTorch container loads ``model.pt`` as TorchScript when no custom code is given, and
``dogbreed serve --backend torchscript`` runs it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import pack
from dogbreed.errors import DogbreedError
from dogbreed.runtime.inference import MODEL_FILE, TORCHSCRIPT_FILE, load_model_dir

FORMATS = ("torchscript",)


def export(artifact: str | os.PathLike, fmt: str = "torchscript", out: str | os.PathLike | None = None) -> Path:
    if fmt not in FORMATS:
        raise DogbreedError(f"export format {fmt!r} is not supported; choose one of: {', '.join(FORMATS)}")
    artifact = Path(artifact)
    if not artifact.is_file():
        raise DogbreedError(f"model artifact {artifact} does not exist")
    out = Path(out) if out else artifact.with_name(artifact.name.replace(".tar.gz", "") + f"-{fmt}.tar.gz")
    with tempfile.TemporaryDirectory(prefix="dogbreed-export-") as tmp:
        safe_extract_tar(artifact, tmp)
        try:
            loaded = load_model_dir(tmp, "cpu")
        except ValueError as exc:
            raise DogbreedError(f"cannot load model {artifact}: {exc}") from None
        size = loaded.preset.crop_size
        with torch.no_grad():
            traced = torch.jit.trace(loaded.model.eval(), torch.zeros(2, 3, size, size))
        traced.save(os.path.join(tmp, TORCHSCRIPT_FILE))
        meta = dict(loaded.meta, exports=sorted(set(loaded.meta.get("exports", [])) | {fmt}))
        Path(tmp, MODEL_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return pack(tmp, out)
