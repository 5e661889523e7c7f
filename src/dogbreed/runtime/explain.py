"""Where in the image the evidence for a breed was: heatmaps over the model's own view of a photo.

For the backbones whose head reads only the average of the last stage's feature maps (a linear
layer after global average pooling: the ResNets, EfficientNet), the class activation map (CAM: the
head's weights for one breed applied at every position of those maps) is exact: the breed's logit
is its mean plus the bias, and Grad-CAM of the last stage gives the same map divided by its area.
The network computes it in the same pass as the answer (``class_maps``: one 1x1 product of the
maps with the head's weights, about 0.3% of a ResNet-50's work), on every backend whose graph has
it (eager, bf16, and the TorchScript, ONNX and int8 exports made since). Elsewhere (ConvNeXt's head
normalises after pooling) Grad-CAM runs on the network as served (eager or bf16), through Captum
(``pip install 'dogbreed[explain]'``; :func:`gradcam`), which needs a backward pass. Every heatmap
names its method. An export made before maps were one of its outputs has neither.

This module turns a map into what people look at: normalised to [0, 1] (negative evidence set to
0, as Grad-CAM does), upsampled to the crop the model saw, coloured and laid over it, as a PNG or
a coarse grid of numbers. The colour map is a short table written here (``runtime/`` ships inside
every artifact and imports only torch, torchvision, numpy and Pillow, so not matplotlib's).
Shipped verbatim inside every artifact (``code/explain.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

CAM, GRADCAM = "cam", "gradcam"
TITLES = {CAM: "CAM", GRADCAM: "Grad-CAM"}  # as figures name them
OVERLAY_ALPHA = 0.5  # at the hottest point: the photo stays visible under the colour
# anchors of matplotlib's "inferno" (dark purple, red, orange, pale yellow), interpolated to 256
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float32)
LUT = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c])
                for c in range(3)], axis=1).round().astype(np.uint8)


def normalized(raw: torch.Tensor | np.ndarray) -> np.ndarray:
    """One raw map (h x w, any scale) as float32 in [0, 1]: negative evidence is 0 (Grad-CAM's
    ReLU), the hottest point 1; a map with no positive evidence is all 0."""
    heat = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
    top = float(heat.max()) if heat.size else 0.0
    return heat / top if top > 0 else np.zeros_like(heat)


def upsampled(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``heat`` (h x w in [0, 1]) resized to ``size`` (width, height) bilinearly, as float32."""
    image = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), mode="F")
    return np.clip(np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32), 0.0, 1.0)


def coloured(heat: np.ndarray) -> np.ndarray:
    """``heat`` (h x w in [0, 1]) as h x w x 3 uint8 colours."""
    return LUT[np.clip((heat * 255).round(), 0, 255).astype(np.uint8)]


def overlay(pixels: torch.Tensor, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The model's view (uint8 pixels, 3 x H x W, as ``pipeline.decode`` gives them) with ``heat``
    (any size, [0, 1]) upsampled over it: the colour weighs ``alpha`` at the hottest point, nothing
    where there is no evidence, so the photo stays legible where the model did not look."""
    photo = pixels.permute(1, 2, 0).numpy().astype(np.float32)
    height, width = photo.shape[:2]
    big = upsampled(heat, (width, height))
    weight = (alpha * big)[..., None]
    blended = photo * (1 - weight) + coloured(big).astype(np.float32) * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), mode="RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: an answer waits on it
    return buffer.getvalue()


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode("ascii")


def grid(heat: np.ndarray, digits: int = 3) -> list[list[float]]:
    """``heat`` as rows of numbers (the coarse map itself: 7 x 7 for a ResNet at 224 pixels)."""
    return [[round(float(v), digits) for v in row] for row in heat]


CENTRE = (0.25, 0.25, 0.75, 0.75)  # the middle half of each side: a quarter of the view


def box_share(heat: np.ndarray, box: tuple[float, float, float, float] = CENTRE) -> float:
    """The share of the map's mass (upsampled to 224 x 224) inside ``box`` (left, top, right,
    bottom as fractions of the view): the ``saliency_focus`` figure, for the dog's box where it is
    known, else the centre (where a map spread evenly puts a quarter of its mass)."""
    big = upsampled(heat, (224, 224))
    total = float(big.sum())
    if total <= 0:
        return 0.0
    left, top, right, bottom = (int(round(v * 224)) for v in box)
    return float(big[top:bottom, left:right].sum()) / total


def gradcam(network: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Grad-CAM of ``layer``'s input (the last stage's feature maps, as the global pooling takes
    them) for each image's target class, by Captum's ``LayerGradCam`` on ``network`` (images to
    logits): batch x h x w, fp32, negative evidence kept. One forward and one backward pass; it
    needs ``pip install 'dogbreed[explain]'`` (:class:`ImportError` otherwise)."""
    from captum.attr import LayerGradCam

    with torch.inference_mode(False), torch.enable_grad():
        x = images.clone()  # a tensor made under inference mode cannot enter autograd
        cam = LayerGradCam(network, layer).attribute(x, target=targets, attribute_to_layer_input=True,
                                                     relu_attributions=False)
    return cam[:, 0].detach().float().cpu()


def peak(heat: np.ndarray) -> tuple[float, float]:
    """Where the map is hottest, as (x, y) fractions of the view (a cell's centre)."""
    h, w = heat.shape
    row, col = divmod(int(np.argmax(heat)), w)
    return (col + 0.5) / w, (row + 0.5) / h
