"""``dogbreed predict``: top-k breeds for image files, through the artifact's own inference path."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from dogbreed import machine, remote
from dogbreed.batching import chunks, ordered
from dogbreed.data.layout import IMAGE_EXTS
from dogbreed.errors import DogbreedError
from dogbreed.flags import option
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import (
    DEFAULT_KEEP,
    DEFAULT_THRESHOLD,
    DEFAULT_TOPK,
    OptionError,
    Options,
    RequestError,
    decode,
    predict,
)

BATCH_SIZE = 16
log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """``dogbreed predict``'s settings (its flags are generated from these fields); None: the
    artifact's own (model.json)."""

    topk: int | None = option(None, f"how many breeds to list (default: the artifact's, {DEFAULT_TOPK})")
    threshold: float | None = option(None, f"`unsure` under this top-1 probability (default: the artifact's, "
                                           f"{DEFAULT_THRESHOLD:g})")
    keep: float | None = option(None, "share of known-breed images the `not_a_dog` threshold lets through, 0 to 1 "
                                      f"(default: the artifact's, {DEFAULT_KEEP:g})")
    json: bool = option(False, "one JSON object per image instead of a table (default: table)")
    explain: bool = option(False, "also write PHOTO.explain.png: the photo, where the model looked for its top breed "
                                  "(a heatmap over it), the top-k bars and the verdict; prints its path")
    explain_breed: str | None = option(None, "with --explain: where the model looked for this breed instead of its top "
                                             "one (as labels.json names it, e.g. 001.Affenpinscher, or its display "
                                             "name; implies --explain)", metavar="BREED")
    out: str | None = option(None, "folder for the --explain figures (default: beside each photo)")


def expand(paths: list[str | os.PathLike]) -> list[Path | remote.S3Image]:
    """Files as given; folders as the images they hold (sorted, recursively); ``s3://`` URLs as the
    object they name or the images under them."""
    files: list[Path | remote.S3Image] = []
    for raw in paths:
        if remote.is_s3(raw):
            files += remote.images(raw, IMAGE_EXTS)
            continue
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        elif path.exists():
            files.append(path)
        else:
            raise DogbreedError(f"{path} does not exist")
    if not files:
        raise DogbreedError(f"no images found in {', '.join(map(str, paths))}")
    return files


def check_flags(topk: int | None, threshold: float | None, keep: float | None = None) -> None:
    """``--topk``, ``--threshold`` and ``--keep`` as typed (None: not given); a bad one is one line."""
    try:
        Options().override(topk, threshold, keep)
    except OptionError as exc:
        raise DogbreedError(f"--{exc.field} {exc.problem}") from None


def warn_unused_keep(loaded: LoadedModel, keep: float | None, name: str) -> None:
    """``--keep`` on a model without a "not a dog" score (trained with ``--reject none``) has nothing
    to move: said in one warning line, as a setting with no effect is elsewhere; the answers are
    still this model's answers, so they go on."""
    if keep is not None and loaded.rejection is None:
        log.warning("--keep %g has no effect: %s has no \"not a dog\" score (trained with --reject none), so no answer "
                    "is not_a_dog", keep, name)


def predict_files(loaded: LoadedModel, files: list[Path], opts: Options | None = None) -> Iterator[tuple[Path, dict]]:
    """(file, answer) in order; an undecodable file gets ``{"error": ...}`` instead of an answer.
    The next files are read and decoded on threads while the network runs a batch."""
    opts = opts or Options.of(loaded)

    def read(path: Path) -> torch.Tensor | str:  # the pixels, or why the file did not decode
        try:
            return decode(loaded, path.read_bytes(), name=str(path))
        except RequestError as exc:
            return str(exc)

    with ThreadPoolExecutor(max(1, machine.available_cpus())) as pool:
        for chunk in chunks(zip(files, ordered(files, read, pool, ahead=2 * BATCH_SIZE)), BATCH_SIZE):
            pixels = [d for _, d in chunk if not isinstance(d, str)]
            answers = iter(predict(loaded, pixels, opts) if pixels else [])
            for path, d in chunk:
                yield path, ({"error": d} if isinstance(d, str) else next(answers))


def verdict_words(answer: dict, threshold: float) -> str | None:
    """The verdict of one answer, in words."""
    verdict = answer.get("verdict")
    if verdict == "not_a_dog":
        return "not a dog, or not a breed this model knows: it looks unlike every breed it was trained on"
    if answer["low_confidence"]:
        return f"not sure (low confidence): top-1 probability under {threshold:g}; try another photo"
    if verdict == "breed":
        least = f", at least {threshold:g}" if threshold > 0 else ""  # a threshold of 0 bars nothing
        return f"breed: {answer['breeds'][0]} (top-1 probability {answer['topk_probs'][0]:.3f}{least})"
    return None


def format_answer(path: Path, answer: dict, threshold: float) -> str:
    if "error" in answer:
        return f"{path}\n   error: {answer['error']}"
    lines = [str(path)]
    for rank, (breed, p) in enumerate(zip(answer["breeds"], answer["topk_probs"]), 1):
        bar = "█" * round(p * 20)
        lines.append(f"  {rank}. {breed:<32} {p:6.3f}  {bar}")
    words = verdict_words(answer, threshold)
    if words:
        lines.append(f"   {words}")
    if answer.get("explanation"):
        lines.append(f"   heatmap: {answer['explanation']}")
    elif answer.get("heatmap_error"):
        lines.append(f"   no heatmap: {answer['heatmap_error']}")
    return "\n".join(lines)


def explained_path(path: Path | remote.S3Image, out: str | None) -> Path:
    """Where ``--explain`` writes the figure of ``path``: ``PHOTO.explain.png`` beside it, or in ``out``."""
    name = _parts(path)[-1] + ".explain.png"
    if out:
        return Path(out) / name
    if isinstance(path, remote.S3Image):
        raise DogbreedError(f"{path} is on S3: give --out DIR for its --explain figure")
    return path.with_name(name)


def explained_paths(paths: list[Path | remote.S3Image], out: str | None) -> dict[str, Path]:
    """:func:`explained_path` of each of ``paths`` (by ``str(path)``), none the same: where two
    photos in different folders share a name, their figures in ``out`` are named after their
    folders too (``FOLDER-PHOTO.explain.png``), and after their place in the list if that is not
    enough. An S3 photo without ``out`` is refused here, before any work."""
    targets = {str(p): explained_path(p, out) for p in paths}
    counts: dict[Path, int] = {}
    for target in targets.values():
        counts[target] = counts.get(target, 0) + 1
    taken = {t for t, n in counts.items() if n == 1}
    for i, path in enumerate(paths):
        if out and counts[targets[str(path)]] > 1:
            parts = _parts(path)
            named = Path(out) / f"{'-'.join(parts[-2:])}.explain.png"
            targets[str(path)] = named if named not in taken else Path(out) / f"{i + 1}-{parts[-1]}.explain.png"
            taken.add(targets[str(path)])
    return targets


def _parts(path: Path | remote.S3Image) -> list[str]:
    return path.url.split("://", 1)[-1].split("/") if isinstance(path, remote.S3Image) else list(path.parts)


def write_explained(loaded: LoadedModel, path: Path | remote.S3Image, answer: dict, threshold: float,
                    target: Path) -> dict:
    """``answer`` (asked with ``explain="grid"``) drawn as a figure (photo, heatmap over it, top-k
    bars, verdict) at ``target`` (:func:`explained_paths`); the answer comes back with the figure's path under
    ``explanation`` instead of the grid (or ``heatmap_error`` where the model has no maps)."""
    from dogbreed import plots
    from dogbreed.runtime import explain as heatmaps

    answer = dict(answer)
    grid = answer.pop("heatmap", None)
    if grid is None:
        return answer
    target.parent.mkdir(parents=True, exist_ok=True)
    pixels = decode(loaded, path.read_bytes(), name=str(path))
    maps = {heatmaps.TITLES[answer["heatmap_method"]]: heatmaps.normalized(grid)}
    breed = loaded.display[loaded.labels.index(answer["heatmap_label"])]
    plots.plot_explained_maps(pixels, maps, answer, verdict_words(answer, threshold) or "", target, breed=breed)
    answer["explanation"] = str(target)
    return answer
