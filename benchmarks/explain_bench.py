"""What a heatmap costs, per image at concurrency 1 (one image a pass, as a person's request comes),
all in one run on a resnet50 with a 133-way head (random weights: speed does not depend on them):

- the answer alone (``pipeline.predict``) on the fastest backend here (``auto``);
- the answer with the class activation map as numbers (``explain=grid``): the same pass through
  ``class_maps``, the map normalised;
- the answer with the map drawn over the photo as a PNG (``explain=1``);
- Grad-CAM by Captum's ``LayerGradCam`` on the network as trained (eager, unfused: a forward and a
  backward pass), what a backbone without an exact CAM would need;
- KernelSHAP over 20 SLIC superpixels (``dogbreed explain --method shap``: ``--shap-samples``
  coalitions a photo, on the same backend as the answer), on ``--shap-images`` photos a round.

Rounds alternate the order (ABBA) so that drift in the machine's speed falls on every way alike.

    python benchmarks/explain_bench.py [--images 32] [--rounds 4] [--shap-images 2] [--shap-samples 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_bench import make_artifact  # noqa: E402

from dogbreed import machine  # noqa: E402


def per_image_ms(work, pixels: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    for p in pixels:
        work(p)
    return 1000 * (time.perf_counter() - started) / len(pixels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--shap-images", type=int, default=2)
    p.add_argument("--shap-samples", type=int, default=256)
    args = p.parse_args()

    from captum.attr import LayerGradCam

    from dogbreed.artifact import extracted, load_artifact
    from dogbreed.data.synth import requests
    from dogbreed.explain import shap_map, superpixels
    from dogbreed.runtime import pipeline
    from dogbreed.runtime.loading import load_model_dir

    machine.keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = make_artifact(Path(tmp), "resnet50")
        fast = load_artifact(artifact, backend="auto", batch_sizes=(1,), fused=True)
        with extracted(artifact) as model_dir:
            trained = load_model_dir(str(model_dir), "cpu", "eager")
        pixels = [pipeline.decode(fast, body) for body, _ in requests(args.images, size=320, seed=5)]
        plain = pipeline.Options.of(fast)
        grid, png = plain.override(explain="grid"), plain.override(explain="png")
        gradcam = LayerGradCam(trained.model, trained.model.body.get_submodule("avgpool"))

        def answer(options):
            return lambda px: pipeline.predict(fast, [px], options)

        def grad_cam(px):
            images = trained.preset.normalize(px[None]).requires_grad_()
            target = int(trained.model(images).argmax())
            return gradcam.attribute(images, target=target, attribute_to_layer_input=True)

        def kernel_shap(px):
            target = pipeline.predict(fast, [px], plain)[0]["topk_indices"][0]
            return shap_map(fast, px, target, superpixels(px, 20, 5.0), args.shap_samples)

        shap_name = f"KernelSHAP ({args.shap_samples} coalitions, 20 superpixels)"
        ways = {"answer": answer(plain), "answer + CAM grid": answer(grid), "answer + CAM PNG": answer(png),
                "Grad-CAM (Captum, eager as trained)": grad_cam, shap_name: kernel_shap}
        subset = {shap_name: pixels[: args.shap_images]}
        for name, work in ways.items():  # warm up every way
            per_image_ms(work, subset.get(name, pixels)[:1])
        times: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                times[name].append(per_image_ms(ways[name], subset.get(name, pixels)))
        print(f"# {machine.describe()}; torch {torch.__version__}; resnet50, 133 classes, random weights; "
              f"{args.images} images of 320 px a round, one a pass; {args.rounds} rounds (ABBA)")
        print(f"# backend: {fast.selection.line() if fast.selection else fast.backend}")
        base = statistics.mean(times["answer"])
        summary = {name: {"ms_per_image": [round(t, 2) for t in ts], "mean_ms": round(statistics.mean(ts), 2),
                          "vs_answer": round(statistics.mean(ts) / base, 3)} for name, ts in times.items()}
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
