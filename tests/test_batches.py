"""The two ways a run feeds the loop: cached embeddings of a frozen backbone, or images."""

import dataclasses
import gc

import psutil
import pytest
import torch

from dogbreed import config
from dogbreed.batches import cached_batches, image_batches
from dogbreed.context import prepare
from dogbreed.run import train
from dogbreed.train import evaluate

from .conftest import TINY, run_cli

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def both_paths(synth_data, tiny_weights, tmp_path_factory):
    """One model, fed both ways: cached embeddings (no augmentation) and eval-preset images."""
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(tiny_weights), "aug_views": 0,
                                    "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    ctx = dataclasses.replace(prepare(cfg), amp_dtype=None)
    cached = cached_batches(ctx, progress=False)
    images = image_batches(dataclasses.replace(ctx, feed=dataclasses.replace(ctx.feed, cached=False)))
    yield ctx.model, cached, images
    images.close()


def _probabilities(module, batches):
    module.eval()
    with torch.no_grad():
        rows = [(torch.softmax(module(x), dim=1), y) for x, y, _ in batches]
    return torch.cat([p for p, _ in rows]), torch.cat([y for _, y in rows])


def test_the_cached_path_computes_what_the_image_path_computes(both_paths):
    """The head on cached embeddings and the whole network on images give the same probabilities
    for every valid and test image (up to the cache's float16 storage): the cached path is an exact
    shortcut, not an approximation."""
    model, cached, images = both_paths
    assert cached.trainable is model.fc  # the head trains in place, inside the network
    for split in ("valid", "test"):
        fast, fast_y = _probabilities(cached.trainable, getattr(cached, split))
        slow, slow_y = _probabilities(model, getattr(images, split))
        assert torch.equal(fast_y, slow_y) and len(fast_y) == 8
        assert (fast - slow).abs().max() < 2e-3, split
        a = evaluate(cached.trainable, getattr(cached, split), device=CPU)
        b = evaluate(model, getattr(images, split), device=CPU)
        assert a.n == b.n and a.loss == pytest.approx(b.loss, rel=1e-2)


def test_what_each_path_trains(both_paths):
    model, cached, images = both_paths
    assert {n for n, p in cached.trainable.named_parameters()} == {"weight", "bias"} and cached.watched == "fc."
    assert images.trainable is model and images.watched == ""
    assert cached.cache_stats["computed"] == 3 and images.cache_stats is None  # train, valid, test entries
    x, y, index = next(iter(cached.train))
    assert x.shape == (8, 512) and x.dtype == torch.float32 and y.shape == index.shape == (8,)
    x, y, index = next(iter(images.train))
    assert x.shape == (8, 3, 64, 64) and y.shape == index.shape == (8,)
    assert len(cached.train) == len(images.train) == 6  # 48 training images in batches of 8


def test_bad_image_is_skipped_with_a_warning_in_worker_processes(data_copy, tmp_path):
    folder = data_copy / "train" / "002.Afghan_hound"
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])  # a valid header: found only when decoded
    proc = run_cli("train", "--data", str(data_copy), "--out", str(tmp_path), "--backbone", "resnet18", "--no-pretrained",
                   "--image-size", "64", "--epochs", "1", "--train-layers", "all", "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipping unreadable image" in proc.stderr and "truncated.jpg" in proc.stderr


def test_a_finished_run_leaves_no_worker_processes_behind(synth_data, tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "out": str(tmp_path), "train_layers": "all",
                                    "epochs": 2, "workers": 2, "profile": False})
    gc.disable()  # the workers must end with the run, not whenever the garbage collector next runs
    try:
        train(cfg, progress=False)
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    finally:
        gc.enable()
    assert left == []
