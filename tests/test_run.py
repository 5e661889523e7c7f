"""A run from config to artifact: the files it writes, and how it fails."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from dogbreed import config
from dogbreed.errors import DogbreedError
from dogbreed.run import train

from .conftest import TINY, run_cli


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))

def test_a_run_writes_every_file_and_metrics_that_mean_what_they_say(trained_run, synth_data):
    run = trained_run.run_dir
    names = sorted(p.name for p in run.iterdir())
    assert names == ["baseline", "checkpoints", "config.yaml", "confused_pairs.png", "confusion.png", "curves.png",
                     "interpretation.json", "labels.json",
                     "metrics.csv", "model.tar.gz", "per_class.csv", "per_class.png", "profile", "reliability.png",
                     "results.json", "top_losses.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    rows = _rows(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr", "seconds"]
    for r in rows:
        assert 0 <= float(r["val_accuracy"]) <= float(r["val_top5"]) <= 1
    results = json.loads((run / "results.json").read_text())
    assert results["test_n"] == 8  # the real test split, not the valid split again
    assert set(results["per_class_accuracy"]) == {"001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier", "004.Akita"}
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert results["best_epoch"] == int(best["epoch"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["backbone"] == "resnet18" and saved["epochs"] == 4
    for png in ("curves.png", "confusion.png", "reliability.png", "top_losses.png", "per_class.png", "confused_pairs.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibration = results["calibration"]
    assert calibration["temperature"] > 0 and calibration["test_n"] == 8
    assert calibration["test_ece_after_ci95"][0] <= calibration["test_ece_after"] <= calibration["test_ece_after_ci95"][1]
    assert results["rejection"]["score"] == "mahalanobis" and 0 <= results["rejection"]["test_kept"] <= 1
    why = json.loads((run / "interpretation.json").read_text())
    losses = [r["loss"] for r in why["top_losses"]]
    assert 0 < len(losses) <= 8 and losses == sorted(losses, reverse=True) and min(losses) >= 0
    test_files = {str(p) for p in (synth_data / "test").glob("*/*.jpg")}
    for pair in why["confused_pairs"]:  # each pair's example is one of its test images
        assert pair["example"] in test_files and Path(pair["example"]).parent.name.endswith(pair["true"].replace(" ", "_"))
    # the heatmaps' focus, measured on the synthetic objects' known boxes, in both files
    focus = results["saliency_focus"]
    assert focus == why["saliency_focus"] and focus["region"] == "box" and focus["images"] == 8
    assert 0 <= focus["mean"] <= 1 and 0 < focus["spread_evenly"] <= 1 and focus["method"] == "cam"
    assert focus["lift"] == pytest.approx(focus["mean"] / focus["spread_evenly"], abs=2e-3)


def test_the_imagenet_dog_detector_keeps_the_heads_it_came_with(synth_data, tmp_path):
    """--reject imagenet: the weights file's own 1000-way head goes into rejection.pth beside the
    breed head (random weights stand in for ImageNet's here)."""
    from torchvision import models

    from dogbreed.artifact import load_artifact
    from dogbreed.runtime import pipeline

    weights = tmp_path / "imagenet-like.pth"
    torch.manual_seed(0)
    imagenet = models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), weights)
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(weights), "out": str(tmp_path),
                                    "epochs": 1, "name": "dogs", "reject": "imagenet", "profile": False})
    model = load_artifact(train(cfg, progress=False).artifact)
    assert model.rejection["score"] == "imagenet"
    assert torch.equal(model.rejection["tensors"]["weight"], imagenet.fc.weight.detach())
    photo = sorted((synth_data / "test").glob("*/*.jpg"))[0]
    pixels = [pipeline.decode(model, photo.read_bytes())]
    answer = pipeline.predict(model, pixels, pipeline.Options.of(model))[0]
    with torch.no_grad():
        imagenet.eval()
        expected = torch.softmax(imagenet(model.preset.normalize(torch.stack(pixels))), dim=1)[0, 151:269].sum()
    assert answer["ood_score"] == pytest.approx(expected.item(), rel=1e-3)
    with pytest.raises(DogbreedError, match="--reject imagenet reads the ImageNet head"):
        config.resolve(overrides={**TINY, "data": str(synth_data), "reject": "imagenet"})  # random init: no ImageNet head

def test_unfrozen_layer4_trains_on_images_and_frozen_layers_keep_their_weights_and_statistics(synth_data, tiny_weights,
                                                                                             tmp_path):
    from dogbreed.archive import safe_extract_tar

    result = train(config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(tiny_weights),
                                             "out": str(tmp_path), "epochs": 2, "train_layers": "layer4"}), progress=False)
    safe_extract_tar(result.artifact, tmp_path / "model")
    trained = torch.load(tmp_path / "model" / "model.pth", weights_only=True)
    start = torch.load(tiny_weights, weights_only=True)
    assert len(result.history) == 2
    backbone = [key for key in start if not key.startswith("fc.")]
    moved = {key for key in backbone if not torch.equal(trained[key], start[key])}
    assert moved == {key for key in backbone if key.startswith("layer4.")}  # BatchNorm statistics included

def test_a_split_with_no_readable_image_is_one_line_and_leaves_nothing(data_copy, tmp_path):
    for f in (data_copy / "valid").rglob("*.jpg"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])  # valid headers, truncated pixels: found only when decoded
    proc = run_cli("train", "--data", str(data_copy), "--out", str(tmp_path / "runs"), "--backbone", "resnet18",
                   "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image could be decoded while embedding valid")
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # the run folder was removed


def test_a_diverging_run_stops_with_one_line_and_leaves_nothing(synth_data, tiny_weights, tmp_path):
    proc = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--weights", str(tiny_weights),
                   *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"), "--no-pretrained",
                   "--lr", "1e20", "--epochs", "2", "--no-progress")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: training diverged in epoch 1")
    assert list((tmp_path / "runs").iterdir()) == []  # diverged before its first checkpoint: nothing kept

def test_runs_started_together_with_one_name_get_distinct_folders(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dogbreed.run import new_run_dir

    cfg = config.resolve(overrides={"out": str(tmp_path), "name": "same"})
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(cfg), range(16)))
    assert len(set(dirs)) == 16 and all((d / "checkpoints").is_dir() for d in dirs)


def test_a_data_set_where_no_image_reads_fails_before_the_run_starts(data_copy, tmp_path):
    for f in data_copy.rglob("*.jpg"):
        f.write_bytes(b"not a jpeg at all")
    proc = run_cli("train", "--data", str(data_copy), "--out", str(tmp_path / "runs"), "--backbone", "resnet18",
                   "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--no-progress")
    assert proc.returncode == 1 and "0/0/0 images" not in proc.stdout
    assert proc.stderr.count("warning: skipping unreadable image") == 10 and "skipping 54 more unreadable images" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: no readable image in train/, valid/, test/ of {data_copy}; "
                                                    f"`dogbreed data check {data_copy}` lists each file and why")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
