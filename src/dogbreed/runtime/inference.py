"""SageMaker's inference handlers (model_fn, input_fn, predict_fn, output_fn) for a dogbreed model.

This file is ``code/inference.py`` in every artifact, next to ``presets.py`` and ``network.py``.
SageMaker's PyTorch container imports it on its own; ``dogbreed predict`` and ``dogbreed serve``
import it from the package. Both run the same code, so they give the same answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

try:
    from .network import OnnxModel, build_network, predict_probs
    from .presets import DEFAULT_MAX_PIXELS, EvalPreset, ImageDecodeError
except ImportError:  # loaded as a top-level module from an extracted artifact's code/ folder
    from network import OnnxModel, build_network, predict_probs  # type: ignore[no-redef]
    from presets import DEFAULT_MAX_PIXELS, EvalPreset, ImageDecodeError  # type: ignore[no-redef]

WEIGHTS_FILE = "model.pth"
LABELS_FILE = "labels.json"
MODEL_FILE = "model.json"
TORCHSCRIPT_FILE = "model.pt"  # the name SageMaker's default TorchScript model_fn loads
ONNX_FILE = "model.onnx"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image", "application/octet-stream")
JSON_TYPE = "application/json"
FORMAT_VERSION = 1  # of model.json; raised when a change would mislead older code
MAX_INSTANCES = int(os.environ.get("DOGBREED_MAX_INSTANCES", "64"))


class InputError(ValueError):
    """A request the model rejects (bad image, unsupported type); the message says why."""


@dataclass
class LoadedModel:
    model: nn.Module
    labels: list[str]  # class index -> folder name, e.g. "001.Affenpinscher"
    display: list[str]  # class index -> display name, e.g. "Affenpinscher"
    preset: EvalPreset
    meta: dict
    device: torch.device

    @property
    def topk(self) -> int:
        return int(os.environ.get("DOGBREED_TOPK", self.meta.get("topk", 5)))

    @property
    def threshold(self) -> float:
        return float(os.environ.get("DOGBREED_THRESHOLD", self.meta.get("threshold", 0.8)))


@dataclass
class Batch:
    images: torch.Tensor  # (N, 3, H, W), preset-transformed
    many: bool  # the request listed instances, so the answer is a list


def read_labels(path: str) -> tuple[list[str], list[str]]:
    """labels.json: ``{"classes": [{"index", "name", "display"}...]}`` -> (names, display names)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    classes = sorted(doc["classes"], key=lambda c: c["index"])
    if [c["index"] for c in classes] != list(range(len(classes))):
        raise ValueError(f"{path}: class indices are not 0..{len(classes) - 1}")
    return [c["name"] for c in classes], [c["display"] for c in classes]


def load_failure(exc: Exception) -> str:
    """Why a weights file did not load, in a line: never torch's advice to retry without
    ``weights_only`` (that would run whatever code the file holds)."""
    text = str(exc)
    if "Weights only load failed" in text:
        return "it holds pickled objects, not just tensors, and those are never loaded"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    reason = " ".join(lines[:2])  # a state-dict mismatch names the keys on its second line
    return reason if len(reason) <= 300 else reason[:297] + "..."


def load_model_dir(model_dir: str, device: str | torch.device | None = None, backend: str = "eager") -> LoadedModel:
    """Rebuild the network from model.json and load model.pth (tensors only, never pickled code).
    ``backend="torchscript"`` or ``"onnx"`` loads the exported ``model.pt`` or ``model.onnx``
    instead (``dogbreed export``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with open(os.path.join(model_dir, MODEL_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"the artifact has format {meta['format_version']}, newer than this code reads "
                             f"({FORMAT_VERSION}); upgrade dogbreed")
        labels, display = read_labels(os.path.join(model_dir, LABELS_FILE))
        if len(labels) != meta["num_classes"]:
            raise ValueError(f"labels.json has {len(labels)} classes, model.json says {meta['num_classes']}")
        preset = EvalPreset.from_dict(meta["preset"])
        model = build_network(meta["backbone"], meta["num_classes"])
    except FileNotFoundError as exc:
        raise ValueError(f"{model_dir}: not a dogbreed model ({os.path.basename(exc.filename)} is missing)") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{model_dir}: model.json or labels.json is malformed ({type(exc).__name__}: {exc})") from None
    if backend in ("torchscript", "onnx"):
        name = TORCHSCRIPT_FILE if backend == "torchscript" else ONNX_FILE
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            raise ValueError(f"{model_dir}: no {name}; make one with `dogbreed export MODEL --format {backend}`")
        try:
            if backend == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                    model = torch.jit.load(path, map_location="cpu").to(device).eval()
            else:
                model, device = OnnxModel(path), torch.device("cpu")
        except ImportError:
            raise
        except Exception as exc:  # each runtime raises its own types for a damaged file
            raise ValueError(f"{model_dir}: {name} is corrupt ({load_failure(exc)})") from None
        return LoadedModel(model, labels, display, preset, meta, device)
    weights = os.path.join(model_dir, WEIGHTS_FILE)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise ValueError(f"{model_dir}: not a dogbreed model (model.pth is missing)") from None
    except Exception as exc:  # torch.load raises many types for damaged or hostile files
        raise ValueError(f"{model_dir}: model.pth is corrupt or does not match model.json ({load_failure(exc)})") from None
    model = model.to(device, memory_format=torch.channels_last).eval()
    return LoadedModel(model, labels, display, preset, meta, device)


def decode(loaded: LoadedModel, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes to the network's input, (3, crop, crop) float."""
    return loaded.preset.normalize(decode_pixels(loaded, data, max_pixels))


def decode_pixels(loaded: LoadedModel, data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes to resized, cropped uint8 pixels; ``loaded.preset.normalize`` finishes the job."""
    try:
        return loaded.preset.load_pixels(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise InputError(str(exc)) from None


def decode_instances(body: bytes | str, limit: int = MAX_INSTANCES) -> list[bytes]:
    """``{"instances": [{"b64": "..."}, ...]}`` -> the images' bytes, in order (at most ``limit``)."""
    try:
        doc = json.loads(body)
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError('"instances" must be a non-empty list of {"b64": "..."} objects')
        if len(instances) > limit:
            raise InputError(f"{len(instances)} instances is over the limit of {limit}")
        return [base64.b64decode(item["b64"], validate=True) for item in instances]
    except InputError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("malformed JSON body") from None
    except (KeyError, TypeError):
        raise InputError('expected {"instances": [{"b64": "..."}, ...]}') from None
    except (binascii.Error, ValueError):
        raise InputError("malformed base64 in instances") from None


def topk_answer(probs: torch.Tensor, loaded: LoadedModel, k: int | None = None, threshold: float | None = None) -> dict:
    """One image's answer, with the field names SageMaker users already parse."""
    k = min(k or loaded.topk, probs.numel())
    threshold = loaded.threshold if threshold is None else threshold
    values, indices = probs.topk(k)
    idx = indices.tolist()
    return {
        "topk_labels": [loaded.labels[i] for i in idx],
        "topk_indices": idx,
        "topk_probs": [round(v, 6) for v in values.tolist()],
        "breeds": [loaded.display[i] for i in idx],
        "low_confidence": bool(values[0].item() < threshold),
    }


# --- SageMaker's four handlers -------------------------------------------------------------------

_CURRENT_MODEL: LoadedModel | None = None  # input_fn needs the model's preset; SageMaker passes none


def model_fn(model_dir: str) -> LoadedModel:
    global _CURRENT_MODEL
    _CURRENT_MODEL = load_model_dir(model_dir)
    return _CURRENT_MODEL


def input_fn(request_body: bytes, content_type: str = "image/jpeg", model: LoadedModel | None = None) -> Batch:
    model = model or _CURRENT_MODEL  # SageMaker calls input_fn(body, content_type), without the model
    content_type = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if content_type == JSON_TYPE:
        images = [decode(model, data) for data in decode_instances(request_body)]
        return Batch(torch.stack(images), many=True)
    if content_type in IMAGE_TYPES:
        return Batch(decode(model, bytes(request_body)).unsqueeze(0), many=False)
    raise InputError(f"unsupported content type {content_type!r}; use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")


def predict_fn(input_data: Batch, model: LoadedModel) -> dict:
    images = input_data.images.to(model.device, memory_format=torch.channels_last)
    probs = predict_probs(model.model, images).cpu()
    answers = [topk_answer(row, model) for row in probs]
    return {"answers": answers, "many": input_data.many}


def output_fn(prediction: dict, accept: str = JSON_TYPE) -> str:
    accept = (accept or JSON_TYPE).split(";")[0].strip().lower()
    if accept not in (JSON_TYPE, "*/*"):
        raise InputError(f"unsupported Accept {accept!r}; only application/json")
    answers = prediction["answers"]
    return json.dumps(answers if prediction["many"] else answers[0])

