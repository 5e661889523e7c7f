"""``model.tar.gz`` in SageMaker's PyTorch layout, written by every run and read by predict/serve.

    model.pth            state dict (torchvision key names)
    labels.json          class index -> folder name and display name
    model.json           backbone, class count, image size, eval preset, config, test metrics,
                         calibration (temperature) and rejection (score, threshold, quantiles)
    rejection.pth        class means and shared precision, where the "not a dog" score reads them
    MODEL_CARD.md        data, metrics with intervals, calibration, rejection, use, limits
    code/                the package's own runtime/ modules, verbatim: inference.py (model_fn,
                         input_fn, predict_fn, output_fn), pipeline.py, loading.py, network.py, explain.py,
                         fusion.py, presets.py...; and requirements.txt
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

import dogbreed
from dogbreed.archive import safe_extract_tar
from dogbreed.data.layout import Labels
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_path
from dogbreed.runtime import backends, loading
from dogbreed.runtime.loading import LABELS_FILE, MODEL_FILE, REJECTION_FILE, WEIGHTS_FILE, LoadedModel
from dogbreed.runtime.pipeline import DEFAULT_THRESHOLD, DEFAULT_TOPK, Options
from dogbreed.runtime.presets import EvalPreset

RUNTIME_DIR = Path(loading.__file__).parent
CARD_FILE = "MODEL_CARD.md"
log = logging.getLogger(__name__)
CODE_FILES = ("inference.py", "pipeline.py", "backends.py", "loading.py", "fusion.py", "network.py", "presets.py",
              "scores.py", "explain.py")
REQUIREMENTS = "torch>=2.2\ntorchvision>=0.17\npillow>=10.0\nnumpy>=1.24\n"  # pyproject's pins (a test holds this)


def model_meta(backbone: str, labels: Labels, preset: EvalPreset, *, threshold: float = DEFAULT_THRESHOLD, **extra) -> dict:
    return {
        "format_version": loading.FORMAT_VERSION,
        "dogbreed_version": dogbreed.__version__,
        "backbone": backbone,
        "num_classes": len(labels.names),
        "image_size": preset.crop_size,
        "preset": preset.to_dict(),
        "topk": DEFAULT_TOPK,
        "threshold": threshold,
        **extra,
    }


def write_model_dir(dest: str | os.PathLike, model: nn.Module, labels: Labels, meta: dict, *,
                    rejection: dict | None = None, card: str | None = None) -> Path:
    """The artifact's files, unpacked (what SageMaker expects in $SM_MODEL_DIR). ``rejection``: the
    tensors the "not a dog" score reads (rejection.pth); ``card``: MODEL_CARD.md."""
    dest = Path(dest)
    (dest / "code").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, dest / WEIGHTS_FILE)
    if rejection:
        torch.save({k: v.detach().cpu() for k, v in rejection.items()}, dest / REJECTION_FILE)
    if card:
        (dest / CARD_FILE).write_text(card, encoding="utf-8")
    labels.write(dest / LABELS_FILE)
    write_meta(dest, meta)
    for name in CODE_FILES:
        shutil.copyfile(RUNTIME_DIR / name, dest / "code" / name)
    (dest / "code" / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    return dest


def write_meta(model_dir: str | os.PathLike, meta: dict) -> None:
    """model.json: what the artifact is and how it answers."""
    (Path(model_dir) / MODEL_FILE).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")


def pack(model_dir: str | os.PathLike, tar_path: str | os.PathLike) -> Path:
    """Tar the model dir's contents (no top-level folder, as SageMaker does), atomically."""
    model_dir = Path(model_dir)
    with atomic_path(tar_path) as tmp:
        # Weights barely compress: level 1 saved 7.5% of a resnet50's 95 MB for 2.5 s of one core, a
        # tenth of a small first run. Stored blocks (level 0) keep it a gzip, as SageMaker needs.
        with tarfile.open(tmp, "w:gz", compresslevel=0) as tar:
            for path in sorted(model_dir.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return Path(tar_path)


def write_artifact(tar_path: str | os.PathLike, model: nn.Module, labels: Labels, meta: dict, **files) -> Path:
    """``files``: as :func:`write_model_dir` takes them."""
    with tempfile.TemporaryDirectory(prefix="dogbreed-artifact-") as tmp:
        return pack(write_model_dir(tmp, model, labels, meta, **files), tar_path)


@contextmanager
def extracted(tar_path: str | os.PathLike):
    """Safely extract an artifact into a temporary folder for as long as the block runs."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise DogbreedError(f"model artifact {tar_path} does not exist; train one with `dogbreed train`")
    with tempfile.TemporaryDirectory(prefix="dogbreed-model-") as tmp:
        safe_extract_tar(tar_path, tmp)
        yield Path(tmp)


def load_artifact(path: str | os.PathLike, device: str | None = None, backend: str = "eager", *,
                  name: str | os.PathLike | None = None, batch_sizes: tuple[int, ...] = backends.DEFAULT_BATCH_SIZES,
                  budget_s: float = backends.DEFAULT_BUDGET_S, images: int | None = None, fused: bool = False) -> LoadedModel:
    """An artifact (``model.tar.gz``) or an unpacked model dir, loaded for prediction on ``backend``
    (``auto``: the fastest here that passed its gate, timed at ``batch_sizes``; how it was chosen
    is kept in ``.selection``; ``images``, the job's size where it is known, keeps the race to what it
    can pay back; a forced backend that cannot run is one warning line). Eager loads the
    network as trained (what reads its layers wants it so) unless ``fused``, as every other backend
    and ``auto`` load it: BatchNorms folded, convolutions fused for the CPU. Errors are one line
    naming ``name`` (default: ``path``), never the temporary folder it was unpacked into."""
    path = Path(path)
    name = name or path
    if path.is_dir():
        if not (path / MODEL_FILE).exists() and (path / "model.tar.gz").is_file():
            raise DogbreedError(f"{path} is a run folder, not a model; pass its artifact, {path / 'model.tar.gz'}")
        return _load(path, name, device, backend, batch_sizes, budget_s, images, fused)
    with extracted(path) as model_dir:
        return _load(model_dir, name, device, backend, batch_sizes, budget_s, images, fused)


def _load(model_dir: Path, name, device, backend, batch_sizes, budget_s, images, fused) -> LoadedModel:
    try:
        if backend == "eager" and not fused:  # what predict, evaluate and export read: nothing to choose
            model = loading.load_model_dir(str(model_dir), device, backend)
        else:
            model, selection = backends.select(str(model_dir), backend, device, batch_sizes=batch_sizes,
                                               budget_s=budget_s, images=images, warn=lambda line: log.warning("%s: %s", name, line))
            model.selection = selection
        Options.of(model)  # its top-k and threshold are valid
        return model
    except loading.ModelLoadError as exc:  # it names model_dir, perhaps a temporary folder: we name ``name``
        raise DogbreedError(f"cannot load model {name}: {exc.reason}") from None
    except ValueError as exc:  # Options.of: "model.json: ..."
        raise DogbreedError(f"cannot load model {name}: {exc}") from None
