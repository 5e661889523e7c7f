"""The accuracy gate, measured: each backend's answers on validation images, decoded as a request's
are, against fp32's (``runtime/backends.py`` defines the gate and uses only what passed it).

Two callers: ``dogbreed export --data`` checks every format it writes on the whole validation
split, and every run checks bf16 at its end (:func:`at_run_end`) where the CPU runs bf16 natively,
so that the artifact ``train`` writes serves on bf16 under ``auto`` with no extra command. That
check runs on :data:`RUN_END_IMAGES` validation images at most, spread over the split: the fp32
pass it needs is the cost, and a run's end is on every training's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from dogbreed.errors import DogbreedError
from dogbreed.runtime import backends, loading, pipeline
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import RequestError

log = logging.getLogger(__name__)
BATCH = 16
RUN_END_IMAGES = 200  # a 99% top-1 gate then allows 2 disagreements


def validation_pixels(model: LoadedModel, paths: Sequence[str | Path], progress: bool) -> list[torch.Tensor]:
    """The images at ``paths``, decoded as a request's are (pixels, ready for the forward pass); an
    unreadable one is a warning line, and none readable one error line."""
    pixels = []
    for path in tqdm(paths, desc="reading valid", unit="img", disable=not progress, leave=False):
        try:
            pixels.append(pipeline.decode(model, Path(path).read_bytes()))
        except (OSError, RequestError) as exc:
            log.warning("skipping unreadable image %s (%s)", path, exc)
    if not pixels:
        raise DogbreedError("no validation image could be read; check the data set with `dogbreed data check`")
    return pixels


def spread(paths: Sequence, most: int) -> list:
    """At most ``most`` of ``paths``, evenly spaced (a split is listed breed by breed: every breed shows)."""
    if len(paths) <= most:
        return list(paths)
    return [paths[i * len(paths) // most] for i in range(most)]


def logits(model: LoadedModel, pixels: list[torch.Tensor], progress: bool, desc: str) -> torch.Tensor:
    chunks = range(0, len(pixels), BATCH)
    return torch.cat([pipeline.forward(model, pixels[i:i + BATCH])[0]
                      for i in tqdm(chunks, desc=desc, unit="batch", disable=not progress, leave=False)])


def agreements(model_dir: str, eager: LoadedModel, pixels: list[torch.Tensor], names: list[str], gate: dict,
               progress: bool) -> dict:
    """Each backend's agreement with fp32 on the validation images, and whether it passed the gate;
    a gated backend that failed it is one line (the artifact keeps its file; serve will not use it)."""
    reference = logits(eager, pixels, progress, "fp32 on valid")
    records = {}
    for name in names:
        model = loading.load_model_dir(model_dir, "cpu", name, fused=True)  # as serving runs it
        record = {**backends.agreement(reference, logits(model, pixels, progress, f"{name} on valid")),
                  "images": len(pixels)}
        record["passed"] = backends.passes(record, gate)
        records[name] = record
        if name in backends.GATED and not record["passed"]:
            log.warning("%s failed its accuracy gate on %d validation images (top-1 agreement %.1f%%, top-5 %.1f%%; "
                        "needs %.1f%% and %.1f%%): it will not be used", name, len(pixels), 100 * record["top1"],
                        100 * record["top5"], 100 * gate["top1"], 100 * gate["top5"])
        else:
            log.info("%s agrees with fp32 on %d validation images: top-1 %.2f%%, top-5 %.2f%%", name, len(pixels),
                     100 * record["top1"], 100 * record["top5"])
    return records


def at_run_end(model_dir: str | Path, valid: Sequence[str | Path], progress: bool = False,
               eager: LoadedModel | None = None) -> dict:
    """model.json's ``gate`` and ``backends`` for a run's artifact (unpacked in ``model_dir``): bf16
    checked on up to :data:`RUN_END_IMAGES` of the ``valid`` images where this CPU runs bf16
    natively; nothing elsewhere (there ``auto`` would not time bf16 anyway). A run whose
    validation images cannot be read still ends: the artifact then serves without bf16. ``eager``:
    the directory's network, loaded fused on the CPU, where the caller has it already."""
    cpu = torch.device("cpu")
    if not valid or not backends.native_bf16(cpu):
        return {}
    eager = eager or loading.load_model_dir(str(model_dir), cpu, "eager", fused=True)
    try:
        pixels = validation_pixels(eager, spread(valid, RUN_END_IMAGES), progress)
    except DogbreedError as exc:
        log.warning("bf16 was not checked against fp32 (%s): the artifact serves without it", exc)
        return {}
    return {"gate": dict(backends.GATE),
            "backends": agreements(str(model_dir), eager, pixels, ["bf16"], backends.GATE, progress)}
