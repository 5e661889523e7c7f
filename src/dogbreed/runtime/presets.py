"""Image decoding and the two transform presets (train and eval), defined once.

Shipped verbatim inside every artifact (``code/presets.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 64_000_000
# Longest side over shortest. Resizing the shorter side to ~232 scales the longer one alike, so a
# 1 x 8000 image of a few hundred bytes would become 232 x 1,856,000 pixels: refused instead.
MAX_ASPECT = 100


class ImageDecodeError(ValueError):
    """The bytes or file are not an image this code can decode: ``source`` names them (a path, or
    "image" for bytes), ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha is composited on white, 16-bit is scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode a path, bytes or file object into an upright RGB image (errors name ``name``, else
    the path, else "image").

    ``max_pixels`` refuses decompression bombs before any pixel is decoded, and so does an aspect
    ratio over ``MAX_ASPECT`` (the resize would blow it up). ``min_side`` lets a
    JPEG decode at a reduced scale whose shorter side is still at least that many pixels (the
    eval preset resizes to it anyway), which makes large photos several times cheaper.
    """
    name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError(name, "empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        img = Image.open(source)
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(name, f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}")
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise ImageDecodeError(name, f"{width}x{height} is too elongated to classify (aspect ratio over {MAX_ASPECT}:1)")
        if min_side is not None and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, str(exc)) from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        reason = "not an image or an unsupported format" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)
        raise ImageDecodeError(name, f"cannot decode ({reason})") from None


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


@dataclass(frozen=True)
class EvalPreset:
    """Resize the shorter side, center-crop, normalize: the chosen weights' own eval transform."""

    crop_size: int = 224
    resize_size: int = 232
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        resize = T.Resize(self.resize_size, interpolation=_interpolation(self.interpolation), antialias=True)
        object.__setattr__(self, "_pixels", T.Compose([resize, T.CenterCrop(self.crop_size), T.PILToTensor()]))
        object.__setattr__(self, "_normalize", T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.pixels(img))

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """The geometric half: resized and cropped uint8 pixels, (3, crop, crop). PIL work only."""
        return self._pixels(img)

    def view_box(self, box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
        """``box`` (left, top, right, bottom as fractions of a ``width`` x ``height`` image) as
        fractions of :meth:`pixels`' view of it (resized as torchvision's Resize does, then the
        centre crop), clipped to the view."""
        short, long = sorted((width, height))
        scaled = (self.resize_size, int(self.resize_size * long / short))
        w, h = scaled if width <= height else scaled[::-1]
        left, top = int(round((w - self.crop_size) / 2.0)), int(round((h - self.crop_size) / 2.0))
        x0, y0, x1, y1 = box
        return tuple(min(max(v, 0.0), 1.0) for v in ((x0 * w - left) / self.crop_size, (y0 * h - top) / self.crop_size,
                                                      (x1 * w - left) / self.crop_size, (y1 * h - top) / self.crop_size))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The numeric half: uint8 pixels, one image or a batch, to the network's float input."""
        return self._normalize(pixels)

    def load_pixels(self, source, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> torch.Tensor:
        """Decode (a JPEG no larger than needed) to the uint8 pixels :meth:`normalize` takes
        (errors name ``name``, as :func:`load_image`'s do)."""
        return self.pixels(load_image(source, max_pixels=max_pixels, min_side=self.resize_size, name=name))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalPreset":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def with_crop(self, crop_size: int) -> "EvalPreset":
        """The same preset at another crop size, keeping the resize/crop ratio."""
        resize = round(crop_size * self.resize_size / self.crop_size)
        return EvalPreset(crop_size, resize, self.mean, self.std, self.interpolation)


@dataclass(frozen=True)
class TrainPreset:
    """Random-resized crop, horizontal flip and colour jitter, then the eval normalization."""

    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    scale: tuple[float, float] = (0.25, 1.0)
    hflip: float = 0.5
    jitter: tuple[float, float, float] = (0.2, 0.2, 0.2)
    _transform: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_transform",
            T.Compose(
                [
                    T.RandomResizedCrop(
                        self.crop_size, scale=tuple(self.scale),
                        interpolation=_interpolation(self.interpolation), antialias=True,
                    ),
                    T.RandomHorizontalFlip(self.hflip),
                    T.ColorJitter(*self.jitter),
                    T.PILToTensor(),
                    T.ToDtype(torch.float32, scale=True),
                    T.Normalize(tuple(self.mean), tuple(self.std)),
                ]
            ),
        )

    @classmethod
    def matching(cls, eval_preset: EvalPreset) -> "TrainPreset":
        return cls(eval_preset.crop_size, eval_preset.mean, eval_preset.std, eval_preset.interpolation)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self._transform(img)

    def describe(self) -> str:
        """A stable text naming every setting (part of the embedding cache key)."""
        return (
            f"TrainPreset(crop={self.crop_size},scale={tuple(self.scale)},hflip={self.hflip},"
            f"jitter={tuple(self.jitter)},mean={tuple(self.mean)},std={tuple(self.std)},"
            f"interp={self.interpolation})"
        )
