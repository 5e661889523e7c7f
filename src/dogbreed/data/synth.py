"""A synthetic ImageFolder data set that a model has to learn, for the demo and the tests.

Each class has its own colour pair, texture and shape; each image places that object at its own
position, scale and rotation on a random background, with noise and a random JPEG quality. The
classes borrow dog-breed folder names so the outputs look like the real data set's.

Every data set records where each object was drawn (``boxes.json``: each image's path, relative
to the data set's folder, to its box as left, top, right, bottom fractions), so a heatmap can be
held to the truth (``saliency``). ``--background cue`` writes the case heatmaps exist to catch: a
data set whose backgrounds give the class away (each class's backgrounds in its own colours, its
object drawn in any class's style), so a model learns the backgrounds, not the objects.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.flags import option

BREEDS = (
    "Affenpinscher", "Afghan_hound", "Airedale_terrier", "Akita", "Alaskan_malamute",
    "American_eskimo_dog", "American_foxhound", "American_staffordshire_terrier",
    "American_water_spaniel", "Anatolian_shepherd_dog", "Australian_cattle_dog",
    "Australian_shepherd", "Australian_terrier", "Basenji", "Basset_hound", "Beagle",
    "Bearded_collie", "Beauceron", "Bedlington_terrier", "Belgian_malinois", "Belgian_sheepdog",
    "Belgian_tervuren", "Bernese_mountain_dog", "Bichon_frise", "Black_and_tan_coonhound",
    "Black_russian_terrier", "Bloodhound", "Bluetick_coonhound", "Border_collie", "Border_terrier",
    "Borzoi", "Boston_terrier", "Bouvier_des_flandres", "Boxer", "Boykin_spaniel", "Briard",
    "Brittany", "Brussels_griffon", "Bull_terrier", "Bulldog",
)
SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "ring")
TEXTURES = ("stripes", "checker", "dots", "solid")
SPLIT_SHARE = (("train", 0.7), ("valid", 0.15), ("test", 0.15))
BACKGROUNDS = ("random", "cue")
BOXES = "boxes.json"  # beside train/, valid/ and test/: where each image's object is


@dataclass
class SynthOptions:
    """What ``dogbreed data synth`` writes (its flags are generated from these fields)."""

    classes: int = option(10, "number of classes")
    per_class: int = option(40, "images per class across all splits")
    size: int = option(224, "image side in pixels")
    seed: int = option(0, "random seed")
    unseen: int = option(0, "also write this many breeds the model never sees, in DIR/unseen/, for testing what it "
                            "says of them")
    background: str = option("random", "backgrounds: random, or cue (each class's backgrounds in its own colours and its "
                                       "object in any class's style: a data set a model can learn from the backgrounds "
                                       "alone, for trying heatmaps)", choices=BACKGROUNDS)

    def validate(self) -> "SynthOptions":
        if self.classes < 2:
            raise DogbreedError(f"--classes must be at least 2, got {self.classes}")
        if self.per_class < 6:
            raise DogbreedError(f"--per-class must be at least 6 (so every split gets an image), got {self.per_class}")
        if self.size < 32:
            raise DogbreedError(f"--size must be at least 32, got {self.size}")
        if self.unseen < 0 or self.unseen > len(BREEDS):
            raise DogbreedError(f"--unseen must be 0..{len(BREEDS)}, got {self.unseen}")
        if self.background not in BACKGROUNDS:
            raise DogbreedError(f"--background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        return self


def class_names(n: int) -> list[str]:
    return [f"{i + 1:03d}.{BREEDS[i] if i < len(BREEDS) else f'Breed_{i + 1:03d}'}" for i in range(n)]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]) * 255


def _traits(index: int) -> tuple[str, str]:
    """A known breed's shape and texture."""
    return SHAPES[index % len(SHAPES)], TEXTURES[(index // len(SHAPES) + index) % len(TEXTURES)]


def _unseen_traits(index: int, classes: int) -> tuple[str, str]:
    """An unseen breed's shape and texture: a pairing of known ones that no known breed has, where
    one is left (fewer than 32 known breeds); else the traits of a known breed."""
    known = {_traits(i) for i in range(classes)}
    free = [(shape, texture) for texture in TEXTURES for shape in SHAPES if (shape, texture) not in known]
    return free[index % len(free)] if free else _traits(index)


def _class_style(index: int, classes: int, seed: int, hue_offset: float = 0.0,
                 traits: tuple[str, str] | None = None) -> dict:
    rng = np.random.default_rng([seed, index, 7])
    hue = ((index + hue_offset) / classes + rng.uniform(-0.02, 0.02)) % 1.0
    shape, texture = traits or _traits(index)
    return {
        "color": _hsv_to_rgb(hue, 0.85, 0.95),
        "color2": _hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35),
        "shape": shape,
        "texture": texture,
        "period": float(rng.uniform(6, 16)),
        "angle": float(rng.uniform(0, math.pi)),
    }


def _shape_points(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "hexagon": 6, "diamond": 4, "star": 10, "cross": 12}[shape]
    pts = []
    for k in range(corners):
        a = rot + 2 * math.pi * k / corners + (math.pi / 4 if shape == "diamond" else 0)
        rr = r
        if shape == "star":
            rr = r if k % 2 == 0 else r * 0.45
        elif shape == "cross":
            rr = r if k % 3 != 1 else r * 0.55
            a = rot + 2 * math.pi * (k // 3) / 4 + (k % 3 - 1) * 0.35
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2), fill=0)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r, rot), fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(style: dict, size: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(style["angle"]) + yy * math.sin(style["angle"])
    v = -xx * math.sin(style["angle"]) + yy * math.cos(style["angle"])
    p = style["period"] * size / 224
    kind = style["texture"]
    if kind == "stripes":
        t = (np.sin(2 * math.pi * u / p + phase) > 0).astype(np.float32)
    elif kind == "checker":
        t = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    elif kind == "dots":
        t = ((np.sin(2 * math.pi * u / p + phase) * np.sin(2 * math.pi * v / p)) > 0.5).astype(np.float32)
    else:
        t = np.zeros((size, size), np.float32)
    return (1 - t)[..., None] * style["color"] + t[..., None] * style["color2"]


def render(style: dict, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of a class: its textured shape on a random background."""
    return drawn(style, size, rng)[0]


def drawn(style: dict, size: int, rng: np.random.Generator,
          colours: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Image.Image, list[float]]:
    """:func:`render`'s image and its object's box (left, top, right, bottom as fractions of the
    side, clipped to the image); ``colours`` gives the background ramp's two ends (else random)."""
    bg_a, bg_b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    if colours is not None:  # the random ones drawn all the same, so the rest of the image is as without
        bg_a, bg_b = (colour + rng.normal(0, 8, 3) for colour in colours)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    background = bg_a * (1 - ramp) + bg_b * ramp
    background = np.broadcast_to(background, (size, size, 3))
    r = size * rng.uniform(0.22, 0.4)
    cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
    mask = _mask(style["shape"], size, cx, cy, r, rng.uniform(0, 2 * math.pi))[..., None]
    pixels = mask * _texture(style, size, rng.uniform(0, 2 * math.pi)) + (1 - mask) * background
    pixels += rng.normal(0, rng.uniform(3, 14), pixels.shape)
    box = [round(min(max(v / size, 0.0), 1.0), 4) for v in (cx - r, cy - r, cx + r, cy + r)]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), box


def _cue(index: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A class's own background colours under ``--background cue``: two muted hues of its own."""
    rng = np.random.default_rng([seed, index, 11])
    hue = (index / classes + 0.25 + rng.uniform(-0.02, 0.02)) % 1.0
    return _hsv_to_rgb(hue, 0.5, 0.7), _hsv_to_rgb((hue + 0.1) % 1.0, 0.4, 0.5)


def read_boxes(root: str | os.PathLike) -> dict[str, list[float]] | None:
    """``boxes.json`` of a synthetic data set (relative path to box), or None for any other."""
    path = Path(root) / BOXES
    return json.loads(path.read_text()) if path.is_file() else None


def synth(dest: str | os.PathLike, classes: int = SynthOptions.classes, per_class: int = SynthOptions.per_class,
          size: int = SynthOptions.size, seed: int = SynthOptions.seed, progress: bool = True,
          unseen: int = SynthOptions.unseen, background: str = SynthOptions.background) -> Path | str:
    """Write ``dest/{train,valid,test}/<NNN.Name>/*.jpg``: ``per_class`` images per class, 70/15/15.

    ``unseen`` > 0 also writes ``dest/unseen/<NNN.Name>/*.jpg``: that many more breeds, in no split,
    each with ``per_class // 2`` images, for trying what a model says of breeds it never saw
    (``dogbreed evaluate --ood DIR/unseen``). Each is made of known breeds' traits, as a new breed
    resembles known ones: a hue halfway between two known breeds' and a shape and texture that known
    breeds have but never together (while fewer than 32 breeds leave such a pairing free); the
    known breeds are the same as without ``unseen``. ``background`` "cue" ties each class to its
    own background colours and draws any class's object on them. ``dest/boxes.json`` says where
    each object is. An ``s3://`` ``dest`` (an empty prefix) gets the same objects, and is returned
    as given."""
    SynthOptions(classes, per_class, size, seed, unseen, background).validate()
    if remote.is_s3(dest):  # written here, then uploaded, as `train --out s3://` uploads a run
        remote.check_writable(dest, empty=True)
        with remote.written_folder(dest, "data set") as local:
            synth(local, classes, per_class, size, seed, progress, unseen, background)
        return dest
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DogbreedError(f"{dest} exists and is not empty; pick a new folder")
    # Written beside the target and renamed into place, so an interrupted run leaves nothing behind.
    work = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    names = class_names(classes)
    counts = [max(1, round(per_class * share)) for _, share in SPLIT_SHARE[1:]]
    counts = [per_class - sum(counts), *counts]
    extra = per_class // 2
    bar = tqdm(total=classes * per_class + unseen * extra, desc="synthesizing", unit="img", disable=not progress,
               leave=False)
    jobs = [(ci, name, _class_style(ci, classes, seed), list(zip(SPLIT_SHARE, counts))) for ci, name in enumerate(names)]
    # Unseen breeds: named after the breeds that come next, made of known breeds' traits.
    jobs += [(classes + ui, name, _class_style(ui, classes, seed + 1, hue_offset=0.5, traits=_unseen_traits(ui, classes)),
              [(("unseen", 0), extra)])
             for ui, name in enumerate(class_names(classes + unseen)[classes:])]
    styles = [style for _, _, style, _ in jobs[:classes]]
    boxes = {}
    for ci, name, style, splits in jobs:
        cue = _cue(ci, classes, seed) if background == "cue" and ci < classes else None
        for si, ((split, _), count) in enumerate(splits):
            folder = work / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                rng = np.random.default_rng([seed, ci, si, k])
                drawn_style = styles[int(rng.integers(classes))] if cue is not None else style
                img, box = drawn(drawn_style, size, rng, cue)
                file = folder / f"{name.split('.', 1)[1]}_{si}{k:04d}.jpg"
                img.save(file, quality=int(rng.integers(60, 96)))
                boxes[file.relative_to(work).as_posix()] = box
                bar.update()
    bar.close()
    (work / BOXES).write_text(json.dumps(boxes, separators=(",", ":")))
    os.replace(work, dest)
    return dest


DRIFTS = ("none", "dark", "blur", "breeds", "unseen", "not_dog")


def requests(n: int, *, classes: int = SynthOptions.classes, size: int = SynthOptions.size, seed: int = SynthOptions.seed,
             draw: int = 0, drift: str = "none") -> list[tuple[bytes, str]]:
    """``n`` JPEG images as an endpoint might be sent them after a model trained on ``synth(classes=,
    seed=)`` is deployed, with each image's true class name (or "" for none): ``draw`` picks the
    images (draws never repeat the data set's own), ``drift`` how the world moved since training:

    ``none`` the training distribution; ``dark`` the same scenes at 40% brightness; ``blur`` out
    of focus; ``breeds`` the first breed only; ``unseen`` breeds the model never saw
    (``synth(unseen=)``'s); ``not_dog`` scenes without any breed's shape."""
    if drift not in DRIFTS:
        raise DogbreedError(f"drift {drift!r} is not one of: {', '.join(DRIFTS)}")
    from PIL import ImageEnhance, ImageFilter

    names = class_names(classes)
    rng = np.random.default_rng([seed, draw, 1_000_003])
    out = []
    for i in range(n):
        label = 0 if drift == "breeds" else int(rng.integers(classes))
        if drift == "unseen":
            style, name = _class_style(label, classes, seed + 1, hue_offset=0.5, traits=_unseen_traits(label, classes)), ""
        else:
            style, name = _class_style(label, classes, seed), names[label]
        if drift == "not_dog":
            img, name = _scene(size, rng), ""
        else:
            img = render(style, size, rng)
        if drift == "dark":
            img = ImageEnhance.Brightness(img).enhance(0.4)
        elif drift == "blur":
            img = img.filter(ImageFilter.GaussianBlur(radius=size / 40))
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
        out.append((buffer.getvalue(), name))
    return out


def _scene(size: int, rng: np.random.Generator) -> Image.Image:
    """A scene with no breed in it: a background ramp, two soft blobs and noise."""
    bg_a, bg_b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = (xx * rng.uniform(0.3, 1) + yy * rng.uniform(0, 0.7))[..., None]
    pixels = bg_a * (1 - ramp) + bg_b * ramp
    for _ in range(2):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        pixels = pixels * (1 - blob) + rng.uniform(0, 255, 3) * blob
    pixels += rng.normal(0, rng.uniform(3, 14), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
