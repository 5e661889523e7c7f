"""Honest answers: calibration and the "not a dog" scores, measured side by side.

A synthetic data set with breeds held out (``data synth --unseen``): a resnet18 is trained on the
known breeds from scratch (no ImageNet weights offline), then frozen, and a head is trained on its
cached embeddings as ``dogbreed train`` does by default. On the test split (known breeds) against
the unseen breeds, random-noise images and the non-dog photos in ../shared/samples/photos, for
each candidate score (MSP, energy, Mahalanobis): AUROC, FPR at 95% TPR, the share of known test
images kept by the threshold chosen on valid (95%), and the score's cost per image next to the
forward pass, here and at the real data set's size (resnet50, 224 px, 133 breeds). Three variants
of the embedding distance that are not shipped are measured beside them. Also ECE and NLL before
and after the temperature.

    python benchmarks/ood_bench.py [--classes 10 --unseen 5 --per-class 60 --size 96]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dogbreed import calibration, config, machine, rejection
from dogbreed.data.layout import load_for_training
from dogbreed.data.synth import synth
from dogbreed.model import build_model, eval_preset
from dogbreed.run import train
from dogbreed.runtime import scores
from dogbreed.runtime.network import get_head, set_head
from dogbreed.runtime.presets import load_image

REPO = Path(__file__).resolve().parents[1]
NOT_DOGS = ("cat_01.jpg", "gecko_02.jpg", "great_horned_owl_02.jpg")


def embed(extractor: torch.nn.Module, preset, paths: list) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), 64):
            batch = torch.stack([preset(load_image(p)) for p in paths[i : i + 64]])
            out.append(extractor(batch).float())
    return torch.cat(out)


def seconds(fn, repeats: int) -> float:
    """Mean seconds of one call, after three to warm up."""
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def candidates(features: torch.Tensor, labels: torch.Tensor, classes: int, gaussian: dict) -> dict:
    """Variants of the embedding-distance score measured beside the shipped ones, not shipped:
    Mahalanobis on L2-normalised embeddings; the relative Mahalanobis distance of Ren et al. (2021),
    the class distance minus the distance to one Gaussian of all the train embeddings; and the
    distance to the nearest train embedding (cosine, k=1) of Sun et al. (2022). ``gaussian``: the
    shipped score's prepared class Gaussians."""
    fit = rejection.fit_gaussian
    gl2 = scores.prepare("mahalanobis", fit(_unit(features), labels, classes))
    everything = scores.prepare("mahalanobis", fit(features, torch.zeros_like(labels), 1))
    bank = _unit(features)

    def maha(f, prepared):
        return scores.score("mahalanobis", None, f, tensors=prepared)

    return {"(mahalanobis, L2-normalised)": lambda f, z: maha(_unit(f), gl2),
            "(relative mahalanobis)": lambda f, z: maha(f, gaussian) - maha(f, everything),
            "(nearest train image, cosine)": lambda f, z: (_unit(f) @ bank.T).max(dim=1).values.double()}


def production_cost(classes: int = 133) -> dict:
    """The Mahalanobis score's cost next to the forward pass at the real data set's size (resnet50,
    224 px, 2048-d embedding, 133 breeds): both are the same whatever the weights, so random ones."""
    model, _ = build_model("resnet50", classes, pretrained=False)
    head = get_head(model, "resnet50")
    set_head(model, "resnet50", torch.nn.Identity())
    model = model.eval().to(memory_format=torch.channels_last)
    one = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(4000, 2048, generator=g)
    prepared = scores.prepare("mahalanobis", rejection.fit_gaussian(sample, torch.randint(0, classes, (4000,), generator=g), classes))
    with torch.inference_mode():
        forward_s = seconds(lambda: head(model(one)), 10)
        f1 = model(one)
        score_s = seconds(lambda: scores.score("mahalanobis", None, f1, tensors=prepared), 200)
    return {"forward_s": forward_s, "score_s": score_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--unseen", type=int, default=5)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--photos", default=str(REPO.parent / "shared" / "samples" / "photos"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    production = production_cost()

    with tempfile.TemporaryDirectory(prefix="dogbreed-ood-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, unseen=args.unseen,
                     progress=False)
        common = {"data": str(data), "out": str(tmp / "runs"), "backbone": "resnet18", "pretrained": False,
                  "image_size": args.size, "cache_dir": str(tmp / "cache"), "profile": False}
        backbone = train(config.resolve(overrides={**common, "train_layers": "all", "epochs": 8, "lr": 0.002,
                                                   "batch_size": 32, "name": "backbone"}), progress=False)
        weights = tmp / "backbone.pth"
        torch.save(torch.load(backbone.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"], weights)
        head_run = train(config.resolve(overrides={**common, "weights": str(weights), "name": "head"}), progress=False)

        layout = load_for_training(data)
        model, _ = build_model("resnet18", args.classes, weights=str(weights))
        state = torch.load(head_run.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
        head = get_head(model, "resnet18")
        head.load_state_dict(state)
        set_head(model, "resnet18", torch.nn.Identity())
        extractor = model.eval()
        preset = eval_preset("resnet18", args.size)
        split = {s: ([p for p, _ in layout.splits[s]], torch.tensor([y for _, y in layout.splits[s]])) for s in layout.splits}
        feats = {s: embed(extractor, preset, paths) for s, (paths, _) in split.items()}
        unseen = sorted((data / "unseen").rglob("*.jpg"))
        noise = []
        rng = np.random.default_rng(0)
        for i in range(40):
            path = tmp / f"noise_{i}.png"
            Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(path)
            noise.append(path)
        photos = [Path(args.photos) / n for n in NOT_DOGS if (Path(args.photos) / n).is_file()]
        outs = {"unseen breeds": embed(extractor, preset, unseen), "random noise": embed(extractor, preset, noise)}
        if photos:
            outs["non-dog photos"] = embed(extractor, preset, photos)

        with torch.inference_mode():
            logits = {s: head(f) for s, f in feats.items()}
            out_logits = {k: head(f) for k, f in outs.items()}
        temperature = calibration.fit_temperature(logits["valid"], split["valid"][1])
        calib = calibration.report(logits["valid"], split["valid"][1], logits["test"], split["test"][1])
        gaussian = scores.prepare("mahalanobis", rejection.fit_gaussian(  # Ledoit-Wolf shrunk shared covariance
            feats["train"], split["train"][1], args.classes))
        scorers = {name: (lambda f, z, name=name: scores.score(name, z, f, temperature, gaussian))
                   for name in ("msp", "energy", "mahalanobis")}  # imagenet needs ImageNet weights: not offline
        scorers.update(candidates(feats["train"], split["train"][1], args.classes, gaussian))
        # The forward pass of one image, and each score's cost for one image, on this machine.
        one = torch.stack([preset(load_image(split["test"][0][0]))])
        with torch.inference_mode():
            forward_s = seconds(lambda: head(extractor(one)), 20)
            f1 = extractor(one)
            z1 = head(f1)
            cost = {name: seconds(lambda score=score: score(f1, z1), 200) for name, score in scorers.items()}
        rows = {}
        for name, score in scorers.items():
            in_valid = score(feats["valid"], logits["valid"])
            in_test = score(feats["test"], logits["test"])
            threshold = rejection.threshold_for(in_valid, 0.95)
            rows[name] = {
                "kept": float((in_test >= threshold).double().mean()),
                **{k: rejection.describe(in_test, score(outs[k], out_logits[k])) for k in outs},
            }

    print(f"\n## ood_bench: resnet18 trained from scratch on {args.classes} synthetic breeds, {args.size} px, "
          f"{args.per_class} images each; {args.unseen} unseen breeds ({len(unseen)} images), {len(noise)} noise images, "
          f"{len(photos)} non-dog photos; cpu ({machine.describe()}), torch {torch.__version__}\n")
    print(f"Calibration on test ({calib['test_n']} images, 15 bins, 95% bootstrap intervals): temperature "
          f"{calib['temperature']:.3g}; ECE {100 * calib['test_ece_before']:.1f}% "
          f"({100 * calib['test_ece_before_ci95'][0]:.1f}-{100 * calib['test_ece_before_ci95'][1]:.1f}) -> "
          f"{100 * calib['test_ece_after']:.1f}% ({100 * calib['test_ece_after_ci95'][0]:.1f}-"
          f"{100 * calib['test_ece_after_ci95'][1]:.1f}); NLL {calib['test_nll_before']:.3f} -> {calib['test_nll_after']:.3f}\n")
    kinds = list(outs)
    print("| score | " + " | ".join(f"AUROC {k} | FPR@95 {k}" for k in kinds) + " | known test kept | cost / forward |")
    print("|---|" + "---|---|" * len(kinds) + "---|---|")
    for name, row in rows.items():
        cells = " | ".join(f"{row[k]['auroc']:.3f} | {row[k]['fpr_at_95_tpr']:.2f}" for k in kinds)
        print(f"| {name} | {cells} | {100 * row['kept']:.0f}% | {100 * cost[name] / forward_s:.2f}% |")
    print(f"\nforward pass, one image: {1000 * forward_s:.1f} ms. At the real data set's size (resnet50, 224 px, "
          f"2048-d, 133 breeds, one image): forward {1000 * production['forward_s']:.1f} ms, mahalanobis "
          f"{1000 * production['score_s']:.3f} ms = {100 * production['score_s'] / production['forward_s']:.2f}% of it")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
