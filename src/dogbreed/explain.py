"""``dogbreed explain``: heatmaps for a folder of photos, by the class activation map the network
gives with its answer (``--method cam``) or by KernelSHAP over superpixels (``--method shap``), as
SageMaker Clarify explains images: slower, and blind to how the model is built, so a check on CAM.

KernelSHAP is Captum's (``KernelShap``): each superpixel of the model's view (scikit-image's SLIC,
Clarify's defaults: 20 segments, compactness 5) is a player, a coalition keeps its superpixels and
greys out the rest (the normalisation's mean colour, zero after normalising), and the top breed's
calibrated probability is the payoff. ``--samples`` coalitions are scored per image, in batches,
on the artifact's fastest backend. The superpixel values are laid over the view like a CAM's; where
both exist, the figure shows them side by side and the line printed per photo gives their
correlation. KernelSHAP needs ``pip install 'dogbreed[explain]'``; the CAM needs nothing more.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text
from dogbreed.flags import option
from dogbreed.runtime import explain as heatmaps
from dogbreed.runtime import pipeline
from dogbreed.runtime.loading import LoadedModel

log = logging.getLogger(__name__)
METHODS = ("cam", "shap")


@dataclass
class ExplainOptions:
    """``dogbreed explain``'s settings (its flags are generated from these fields)."""

    method: str = option("shap", "cam (the class activation map, one pass) or shap (KernelSHAP over superpixels, "
                                 "model-agnostic, --samples passes)", choices=METHODS)
    out: str = option("explained", "folder for the figures (NAME.METHOD.png) and explained.jsonl")
    segments: int = option(20, "superpixels per image for shap (SLIC's n_segments, as SageMaker Clarify sets it)")
    compactness: float = option(5.0, "SLIC's compactness for shap, as Clarify sets it: higher, squarer superpixels")
    samples: int = option(256, "coalitions KernelSHAP scores per image (more: steadier values, slower)")
    limit: int = option(16, "explain at most this many photos (the first, in name order); 0: all")

    def validate(self) -> "ExplainOptions":
        if self.method not in METHODS:
            raise DogbreedError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.segments < 2:
            raise DogbreedError(f"--segments must be at least 2, got {self.segments}")
        if self.compactness <= 0:
            raise DogbreedError(f"--compactness must be positive, got {self.compactness:g}")
        if self.samples < 2 * self.segments:
            raise DogbreedError(f"--samples must be at least twice --segments ({2 * self.segments}), got {self.samples}")
        if self.limit < 0:
            raise DogbreedError(f"--limit must be 0 (all) or more, got {self.limit}")
        return self


def _libraries():
    try:
        from captum.attr import KernelShap
        from skimage.segmentation import slic
    except ImportError:
        raise DogbreedError("--method shap needs Captum and scikit-image: pip install 'dogbreed[explain]'") from None
    return KernelShap, slic


def superpixels(pixels: torch.Tensor, segments: int, compactness: float) -> torch.Tensor:
    """SLIC's superpixels of the view (uint8, 3 x H x W): H x W segment numbers from 0."""
    _, slic = _libraries()
    image = pixels.permute(1, 2, 0).numpy().astype(np.float64) / 255.0
    return torch.from_numpy(slic(image, n_segments=segments, compactness=compactness, start_label=0).astype(np.int64))


def shap_map(model: LoadedModel, pixels: torch.Tensor, target: int, segments: torch.Tensor, samples: int) -> np.ndarray:
    """KernelSHAP's value of each superpixel for ``target``'s calibrated probability, laid over the
    view (H x W, raw: positive for evidence for the breed)."""
    kernel_shap, _ = _libraries()
    images = model.preset.normalize(pixels[None].to(model.device)).contiguous(memory_format=torch.channels_last)

    def probability(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = model.model(batch.contiguous(memory_format=torch.channels_last))
        return pipeline.probabilities(model, logits.float().cpu())

    explainer = kernel_shap(probability)
    values = explainer.attribute(images, baselines=0.0, target=target, feature_mask=segments[None, None].to(model.device),
                                 n_samples=samples, perturbations_per_eval=16)
    return values[0, 0].detach().float().cpu().numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's correlation of two maps at the view's size (None where either is flat)."""
    size = (224, 224)
    x, y = heatmaps.upsampled(a, size).ravel(), heatmaps.upsampled(b, size).ravel()
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def run(model: LoadedModel, files: list, opts: ExplainOptions, *, progress: bool = False) -> list[dict]:
    """Explain each photo's top breed by ``opts.method``; write ``OUT/NAME.METHOD.png`` and one line of
    ``OUT/explained.jsonl`` per photo; return the lines."""
    from tqdm import tqdm

    from dogbreed import plots
    from dogbreed.predict import verdict_words
    from dogbreed.runtime.pipeline import Options, RequestError

    opts.validate()
    if opts.method == "shap":
        _libraries()  # a missing library is one line before any work
    if remote.is_s3(opts.out):
        raise DogbreedError(f"--out {opts.out}: explain writes a local folder; give a path")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = files[: opts.limit] if opts.limit else files
    options = Options.of(model).override(explain="grid")
    lines = []
    for path in tqdm(chosen, desc=f"explain ({opts.method})", unit="img", disable=not progress):
        try:
            pixels = pipeline.decode(model, path.read_bytes(), name=str(path))
        except RequestError as exc:
            log.warning("skipping %s", exc)
            lines.append({"file": str(path), "error": str(exc)})
            continue
        answer, = pipeline.predict(model, [pixels], options)
        top = answer["topk_indices"][0]
        cam = None if answer["heatmap"] is None else np.asarray(answer["heatmap"], dtype=np.float32)
        maps = {}
        line = {"file": str(path), "breed": answer["topk_labels"][0], "probability": answer["topk_probs"][0],
                "method": opts.method}
        if opts.method == "shap":
            segments = superpixels(pixels, opts.segments, opts.compactness)
            raw = shap_map(model, pixels, top, segments, opts.samples)
            shap = heatmaps.normalized(raw)
            maps[f"KernelSHAP ({int(segments.max()) + 1} superpixels)"] = shap
            line["superpixels"] = int(segments.max()) + 1
            if cam is not None:
                line["correlation_with_cam"] = None if (r := correlation(shap, cam)) is None else round(r, 4)
        if cam is not None:
            maps[heatmaps.TITLES[answer["heatmap_method"]]] = cam
        elif opts.method == "cam":
            line["error"] = answer["heatmap_error"]
        if maps:
            figure = out / f"{Path(str(path)).name}.{opts.method}.png"
            plots.plot_explained_maps(pixels, maps, answer, verdict_words(answer, options.threshold) or "", figure)
            line["figure"] = str(figure)
        lines.append(line)
    atomic_write_text(out / "explained.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return lines
