"""``dogbreed predict``: top-k breeds for image files, with the artifact's own inference code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from dogbreed.data.layout import IMAGE_EXTS
from dogbreed.errors import DogbreedError
from dogbreed.runtime.inference import InputError, LoadedModel, decode, topk_answer
from dogbreed.runtime.network import predict_probs


def expand(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders as the images they hold (sorted, recursively)."""
    files: list[Path] = []
    for raw in paths:
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


def predict_files(loaded: LoadedModel, files: list[Path], *, topk: int = 5, threshold: float | None = None,
                  batch_size: int = 16) -> Iterator[tuple[Path, dict]]:
    """(file, answer) in order; an undecodable file gets ``{"error": ...}`` instead of an answer."""
    if topk < 1:
        raise DogbreedError(f"--topk must be at least 1, got {topk}")
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        decoded: list[torch.Tensor | str] = []  # per position: the image, or why it did not decode
        for path in chunk:
            try:
                decoded.append(decode(loaded, path.read_bytes()))
            except InputError as exc:
                decoded.append(str(exc).replace("image:", f"{path}:", 1))
        images = [d for d in decoded if isinstance(d, torch.Tensor)]
        probs = iter(())
        if images:
            batch = torch.stack(images).to(loaded.device, memory_format=torch.channels_last)
            probs = iter(predict_probs(loaded.model, batch).cpu())
        for path, d in zip(chunk, decoded):
            if isinstance(d, str):
                yield path, {"error": d}
            else:
                yield path, topk_answer(next(probs), loaded, topk, threshold)


def format_answer(path: Path, answer: dict, threshold: float) -> str:
    if "error" in answer:
        return f"{path}\n   error: {answer['error']}"
    lines = [str(path)]
    for rank, (breed, label, p) in enumerate(zip(answer["breeds"], answer["topk_labels"], answer["topk_probs"]), 1):
        bar = "█" * round(p * 20)
        lines.append(f"  {rank}. {breed:<32} {p:6.3f}  {bar}")
    if answer["low_confidence"]:
        lines.append(f"   low confidence: top-1 probability under {threshold:g}; the photo may show no known breed")
    return "\n".join(lines)


