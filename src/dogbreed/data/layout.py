"""The ImageFolder layout (root/{train,valid,test}/<NNN.Name>/*.jpg), its checks and its labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dogbreed.errors import DogbreedError
from dogbreed.machine import available_cpus
from dogbreed.runtime.presets import ImageDecodeError, load_image

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SHOWN_BAD = 10  # unreadable images named one by one when training starts; the rest are counted
IMBALANCE_RATIO = 4.0  # largest/smallest training class above this earns a warning
HINT = "expected DIR/{train,valid,test}/<class>/*.jpg; try `dogbreed data synth DIR` or `dogbreed data fetch`"

Sample = tuple[str, int]  # (path, class index)


def display_name(folder: str) -> str:
    """``"001.Affenpinscher"`` -> ``"Affenpinscher"``; ``"002.Afghan_hound"`` -> ``"Afghan hound"``."""
    head, dot, tail = folder.partition(".")
    name = tail if dot and head.isdigit() else folder
    return name.replace("_", " ")


@dataclass
class Labels:
    names: list[str]  # class index -> folder name

    @property
    def display(self) -> list[str]:
        return [display_name(n) for n in self.names]

    def to_json(self) -> dict:
        return {"classes": [{"index": i, "name": n, "display": display_name(n)} for i, n in enumerate(self.names)]}

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")


@dataclass
class Layout:
    root: Path
    labels: Labels
    splits: dict[str, list[Sample]]
    ignored: list[str] = field(default_factory=list)  # files that are not images by name
    misplaced: list[str] = field(default_factory=list)  # images outside a class folder, or in a subfolder of one

    def counts(self) -> dict[str, list[int]]:
        out = {}
        for split, samples in self.splits.items():
            per_class = [0] * len(self.labels.names)
            for _, idx in samples:
                per_class[idx] += 1
            out[split] = per_class
        return out


@dataclass
class Report:
    layout: Layout | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def ok(self) -> bool:
        return not self.errors


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(paths) -> list[str]:
    return [str(p) for p in paths if p.is_file() and p.suffix.lower() in IMAGE_EXTS]


def model_index(layout: Layout, model_labels: list[str], data: str | os.PathLike) -> dict[str, int]:
    """Each class folder's index among a model's ``model_labels``. A data set (``data``, as the user
    named it) with a breed the model does not know is one line: every measure taken on it (evaluate's
    accuracy, export's int8 calibration and accuracy gates) would be about another problem."""
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = sorted(set(layout.labels.names) - set(index))
    if unknown:
        raise DogbreedError(f"{data} has breeds the model does not know ({', '.join(unknown[:3])}); use data with "
                            f"the model's classes (its labels.json)")
    return index


def scan(root: str | os.PathLike | None) -> Layout:
    """Read the layout; raise DogbreedError (one line) for anything training cannot start with."""
    if not root:
        raise DogbreedError("no data set given; pass --data DIR (expected DIR/{train,valid,test}/<class>/*.jpg)")
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DogbreedError(f"data dir {root} {what}; {HINT}")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DogbreedError(f"{root} has no {', '.join(missing)} folder(s); {HINT}")
    classes = {s: _class_dirs(root / s) for s in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise DogbreedError(f"no class folders under {root / split}; {HINT}")
    reference = set(classes["train"])
    for split in SPLITS[1:]:
        here = set(classes[split])
        if here != reference:
            parts = []
            if reference - here:
                parts.append(f"missing {', '.join(sorted(reference - here))}")
            if here - reference:
                parts.append(f"extra {', '.join(sorted(here - reference))}")
            raise DogbreedError(f"{split}/ and train/ hold different classes: {split}/ is {'; '.join(parts)}")
    names = classes["train"]
    if len(names) < 2:
        raise DogbreedError(f"{root / 'train'} has {len(names)} class folder; a classifier needs at least 2")
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, list[Sample]] = {}
    ignored: list[str] = []
    misplaced: list[str] = []  # images a class folder does not hold directly: never silently dropped
    for split in SPLITS:
        misplaced += _images(sorted((root / split).iterdir()))
        samples: list[Sample] = []
        for name in names:
            folder = root / split / name
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                misplaced += _images(sorted(sub.rglob("*")))
            files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
            ignored += [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTS]
            if not images:
                raise DogbreedError(f"class folder {folder} holds no images; add images or remove the class from every split")
            samples += [(str(p), index[name]) for p in images]
        splits[split] = samples
    return Layout(root, Labels(names), splits, ignored, misplaced)


def _probe(path: str, full: bool) -> tuple[str | None, str | None]:
    """(why the image does not decode or None, its content digest). ``full=False`` reads the
    header only, and gives no digest."""
    try:
        if not full:
            with Image.open(path) as img:
                img.size  # noqa: B018 - the header is parsed on open
            return None, None
        data = Path(path).read_bytes()  # read once: hashed, then decoded
        load_image(data, max_pixels=None, name=path)
        return None, hashlib.blake2b(data).hexdigest()
    except ImageDecodeError as exc:
        return str(exc), None
    except Exception as exc:  # PIL raises many types for bad headers
        return f"{path}: cannot decode ({exc})", None


def probe_images(layout: Layout, full: bool = True, workers: int | None = None,
                 progress: bool = True) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(path, reason) for every image that does not decode, and (full only) every decodable
    image's content digest by path; decoding runs on a thread pool."""
    paths = [p for samples in layout.splits.values() for p, _ in samples]
    with ThreadPoolExecutor(max_workers=workers or available_cpus()) as pool:
        results = pool.map(lambda p: _probe(p, full), paths)
        bar = tqdm(results, total=len(paths), desc="checking images", unit="img", disable=not progress, leave=False)
        probed = list(zip(paths, bar))
    bad = [(path, reason) for path, (reason, _) in probed if reason]
    return bad, {path: digest for path, (_, digest) in probed if digest}


def split_digest(files: list[str | os.PathLike], root: str | os.PathLike) -> str:
    """A split's identity: SHA-256 over each image's path under ``root`` and its bytes' digest, in
    path order. Two models tested on splits with one digest were tested on the same images, wherever
    the data set lay (what ``register --promote`` requires before it compares them)."""
    total = hashlib.sha256()
    for rel, path in sorted((Path(p).relative_to(root).as_posix(), p) for p in files):
        total.update(rel.encode() + b"\0" + hashlib.blake2b(Path(path).read_bytes()).digest())
    return total.hexdigest()


def find_leaks(layout: Layout, digests: dict[str, str]) -> list[list[str]]:
    """Groups of byte-identical images that sit in more than one split (a test photo that is also a
    training photo makes the test score a memory test)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for split, samples in layout.splits.items():
        for path, _ in samples:
            if path in digests:
                groups.setdefault(digests[path], []).append((path, split))
    return [[path for path, _ in g] for g in groups.values() if len({split for _, split in g}) > 1]


def check(root: str | os.PathLike | None, full: bool = True, progress: bool = True) -> Report:
    """Everything ``dogbreed data check`` reports. Unreadable images are errors here; training
    (which calls this with ``full=False``) skips them with a warning instead."""
    try:
        layout = scan(root)
    except DogbreedError as exc:
        return Report(None, errors=[str(exc)])
    report = Report(layout)
    report.bad_images, digests = probe_images(layout, full=full, progress=progress)
    report.errors += [f"unreadable image {reason}" for _, reason in report.bad_images]
    if leaks := find_leaks(layout, digests):
        report.warnings.append(f"{len(leaks)} image(s) appear in more than one split, byte for byte, e.g. "
                               f"{' = '.join(leaks[0])}; test and validation scores count them as unseen")
    if layout.ignored:
        report.warnings.append(f"{len(layout.ignored)} non-image file(s) ignored, e.g. {layout.ignored[0]}")
    if layout.misplaced:
        report.warnings.append(f"{len(layout.misplaced)} image(s) outside a class folder ignored (directly in a split, or "
                               f"in a subfolder of a class), e.g. {layout.misplaced[0]}; put each in DIR/<split>/<class>/")
    train_counts = layout.counts()["train"]
    low, high = min(train_counts), max(train_counts)
    if high > IMBALANCE_RATIO * low:
        smallest = layout.labels.names[train_counts.index(low)]
        largest = layout.labels.names[train_counts.index(high)]
        report.warnings.append(
            f"class imbalance in train/: {largest} has {high} images, {smallest} has {low} "
            f"(ratio {high / low:.1f} > {IMBALANCE_RATIO:g})"
        )
    return report


def drop_bad(layout: Layout, bad: list[tuple[str, str]]) -> Layout:
    """The layout without the images in ``bad``."""
    bad_paths = {path for path, _ in bad}
    splits = {s: [(p, i) for p, i in samples if p not in bad_paths] for s, samples in layout.splits.items()}
    return dataclasses.replace(layout, splits=splits)


def load_for_training(root: str | os.PathLike | None) -> Layout:
    """The data set after the same checks as ``dogbreed data check`` (headers only, for speed).
    Unreadable images are skipped with a warning naming each file; layout errors stop the run."""
    report = check(root, full=False, progress=False)
    if report.layout is None:
        raise DogbreedError(report.errors[0])
    for warning in report.warnings:
        log.warning(warning)
    for _, reason in report.bad_images[:SHOWN_BAD]:
        log.warning("skipping unreadable image %s", reason)
    if len(report.bad_images) > SHOWN_BAD:
        log.warning("skipping %d more unreadable images; `dogbreed data check %s` lists them all",
                    len(report.bad_images) - SHOWN_BAD, report.layout.root)
    layout = drop_bad(report.layout, report.bad_images)
    if empty := [s for s in SPLITS if not layout.splits[s]]:
        raise DogbreedError(f"no readable image in {', '.join(f'{s}/' for s in empty)} of {layout.root}; "
                            f"`dogbreed data check {layout.root}` lists each file and why")
    return layout
