"""An unpacked artifact loaded for prediction: model.json, labels.json and the weights.

Shipped verbatim inside every artifact (``code/loading.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

try:
    from .fusion import ForCpu
    from .network import Autocast, OnnxModel, WithFeatures, backbone, build_network
    from .presets import EvalPreset
    from .scores import SCORES, TENSORS, prepare
except ImportError:  # loaded as a top-level module from an extracted artifact's code/ folder
    from fusion import ForCpu  # type: ignore[no-redef]
    from network import Autocast, OnnxModel, WithFeatures, backbone, build_network  # type: ignore[no-redef]
    from presets import EvalPreset  # type: ignore[no-redef]
    from scores import SCORES, TENSORS, prepare  # type: ignore[no-redef]

WEIGHTS_FILE = "model.pth"
LABELS_FILE = "labels.json"
MODEL_FILE = "model.json"
TORCHSCRIPT_FILE = "model.pt"  # the name SageMaker's default TorchScript model_fn loads
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # static int8 quantization of model.onnx, calibrated on the validation images
REJECTION_FILE = "rejection.pth"  # what the "not a dog" score needs beyond the network (class means...)
FORMAT_VERSION = 1  # of model.json; raised when a change would mislead older code
# backend -> the file it runs: PyTorch fp32, PyTorch under bf16 autocast, TorchScript, ONNX Runtime fp32 and int8
BACKENDS = {"eager": WEIGHTS_FILE, "bf16": WEIGHTS_FILE, "torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, "int8": INT8_FILE}
EXPORT_FORMATS = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, "int8": INT8_FILE}  # what `dogbreed export` writes


class ModelLoadError(ValueError):
    """An artifact folder that cannot be loaded: ``path`` is the folder, ``reason`` says why in a
    line (a caller that unpacked it names the archive instead)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class LoadedModel:
    model: nn.Module  # or a TorchScript module, or an OnnxModel: anything that maps images to logits
    labels: list[str]  # class index -> folder name, e.g. "001.Affenpinscher"
    display: list[str]  # class index -> display name, e.g. "Affenpinscher"
    preset: EvalPreset
    meta: dict  # model.json
    device: torch.device
    backend: str = "eager"
    temperature: float = 1.0  # logits are divided by it before the softmax (model.json's calibration)
    # model.json's "rejection" (score, threshold, keep, quantiles) and, for a score that reads the
    # embedding, its tensors; None for an artifact without one (older, or trained with --reject none)
    rejection: dict | None = None
    selection: object | None = None  # backends.Selection: how the backend was chosen, where select() chose it
    # the network as trained (fp32, unfused), for Grad-CAM, where the backbone has no exact class
    # activation map (``explain.py``) and the served network cannot be differentiated; else None
    explainer: nn.Module | None = None


def read_labels(model_dir: str) -> tuple[list[str], list[str]]:
    """labels.json: ``{"classes": [{"index", "name", "display"}...]}`` -> (names, display names)."""
    with open(os.path.join(model_dir, LABELS_FILE), encoding="utf-8") as f:
        doc = json.load(f)
    classes = sorted(doc["classes"], key=lambda c: c["index"])
    if [c["index"] for c in classes] != list(range(len(classes))):
        raise ModelLoadError(model_dir, f"{LABELS_FILE}: class indices are not 0..{len(classes) - 1}")
    return [c["name"] for c in classes], [c["display"] for c in classes]


def read_tensors(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never pickled code.
    A file that is not one is a ValueError saying why in a few words (never torch's advice to
    retry without ``weights_only``, which would run whatever code the file holds)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # missing, a folder, unreadable: the caller names the file
        raise
    except Exception as exc:  # torch raises many types for files that are not its own
        if "Unsupported global" in str(exc):
            raise ValueError("it holds pickled objects, not just tensors, and those are never loaded") from None
        raise ValueError("it is not a PyTorch weights file, or a damaged one") from None


def load_failure(exc: Exception) -> str:
    """Why loading failed, in a line (a state-dict mismatch names the keys on its second line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    reason = " ".join(lines[:2])
    return reason if len(reason) <= 300 else reason[:297] + "..."


def load_model_dir(model_dir: str, device: str | torch.device | None = None, backend: str = "eager",
                   fused: bool = False) -> LoadedModel:
    """Rebuild the network from model.json and load model.pth (tensors only, never pickled code).
    ``backend="bf16"`` runs it under bf16 autocast; ``"torchscript"``, ``"onnx"`` or ``"int8"``
    loads the exported ``model.pt``, ``model.onnx`` or ``model.int8.onnx`` instead (``dogbreed
    export``). Which of them to trust and which is fastest is ``backends.py``'s business. Every
    failure is a :class:`ModelLoadError`. ``fused``: on a CPU, eager and bf16 run the backbone with
    its BatchNorms folded and its convolutions fused (``fusion.py``), as serving does; what exports
    or reads the network's layers loads it as trained."""
    if backend not in BACKENDS:
        raise ModelLoadError(model_dir, f"backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with open(os.path.join(model_dir, MODEL_FILE), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ModelLoadError(model_dir, f"the artifact has format {meta['format_version']}, newer than this code "
                                            f"reads ({FORMAT_VERSION}); upgrade dogbreed")
        labels, display = read_labels(model_dir)
        if len(labels) != meta["num_classes"]:
            raise ModelLoadError(model_dir, f"labels.json has {len(labels)} classes, model.json says {meta['num_classes']}")
        preset = EvalPreset.from_dict(meta["preset"])
        network = build_network(meta["backbone"], meta["num_classes"])
        temperature = meta.get("calibration", {}).get("temperature", 1.0)  # older artifacts: none, raw probabilities
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ModelLoadError(model_dir, f"model.json's calibration temperature must be a positive number, "
                                            f"got {temperature!r}")
        rejection = _rejection(model_dir, meta.get("rejection"))
    except FileNotFoundError as exc:
        raise ModelLoadError(model_dir, f"not a dogbreed model ({os.path.basename(exc.filename)} is missing)") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(model_dir, f"model.json or labels.json is malformed ({type(exc).__name__}: {exc})") from None
    except ModelLoadError:
        raise
    except ValueError as exc:  # model.json names an unknown backbone or preset setting
        raise ModelLoadError(model_dir, str(exc)) from None
    name = BACKENDS[backend]
    path = os.path.join(model_dir, name)
    if not os.path.exists(path):
        if name == WEIGHTS_FILE:
            raise ModelLoadError(model_dir, f"not a dogbreed model ({name} is missing)")
        raise ModelLoadError(model_dir, f"no {name}; make one with `dogbreed export MODEL --format {backend}`")
    explainer = None
    if name == WEIGHTS_FILE:
        network = _as_trained(model_dir, network, meta, device)
        if not fused and backend == "eager" and not backbone(meta["backbone"]).cam:
            explainer = network  # served as trained: Grad-CAM runs on it
        elif not backbone(meta["backbone"]).cam:
            explainer = _as_trained(model_dir, build_network(meta["backbone"], meta["num_classes"]), meta, device)
        if fused and device.type == "cpu":
            network.body = ForCpu(network.body, torch.bfloat16 if backend == "bf16" else torch.float32)
        if backend == "bf16":
            network = Autocast(network, torch.bfloat16).eval()
        return LoadedModel(network, labels, display, preset, meta, device, backend, temperature, rejection,
                           explainer=explainer)
    try:
        if backend == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                network = torch.jit.load(path, map_location="cpu").to(device).eval()
        else:
            network, device = OnnxModel(path), torch.device("cpu")
    except ImportError:
        raise
    except Exception as exc:  # each runtime raises its own types for a damaged file
        raise ModelLoadError(model_dir, f"{name} is corrupt ({load_failure(exc)})") from None
    if not backbone(meta["backbone"]).cam and os.path.exists(os.path.join(model_dir, WEIGHTS_FILE)):
        explainer = _as_trained(model_dir, build_network(meta["backbone"], meta["num_classes"]), meta, device)
    return LoadedModel(network, labels, display, preset, meta, device, backend, temperature, rejection,
                       explainer=explainer)


def _as_trained(model_dir: str, network: nn.Module, meta: dict, device: torch.device) -> WithFeatures:
    """``network`` (built from model.json) with model.pth's weights, split at its head, in eval mode."""
    try:
        state = read_tensors(os.path.join(model_dir, WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(model_dir, f"{WEIGHTS_FILE} is unreadable ({exc})") from None
    try:
        network.load_state_dict(state)
    except Exception as exc:  # not a state dict, or another network's
        raise ModelLoadError(model_dir, f"{WEIGHTS_FILE} does not match model.json ({load_failure(exc)})") from None
    network = WithFeatures(network, meta["backbone"])  # one pass: the logits and the embedding
    return network.to(device, memory_format=torch.channels_last).eval()


def _rejection(model_dir: str, doc: dict | None) -> dict | None:
    """model.json's rejection, checked, with its tensors (``rejection.pth``) where its score needs them."""
    if not doc:
        return None
    if doc.get("score") not in SCORES or not isinstance(doc.get("quantiles"), list) or len(doc["quantiles"]) < 2:
        raise ModelLoadError(model_dir, f"model.json's rejection is malformed (score {doc.get('score')!r})")
    doc = dict(doc)
    if doc["score"] in TENSORS:
        try:
            tensors = read_tensors(os.path.join(model_dir, REJECTION_FILE))
            doc["tensors"] = prepare(doc["score"], {k: tensors[k].float() for k in TENSORS[doc["score"]]})
        except FileNotFoundError:
            raise ModelLoadError(model_dir, f"not a dogbreed model ({REJECTION_FILE} is missing)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(model_dir, f"{REJECTION_FILE} is unreadable ({exc})") from None
    return doc
