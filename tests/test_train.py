import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dogbreed import config
from dogbreed.cli import main
from dogbreed.data.loaders import TensorBatches
from dogbreed.run import train
from dogbreed.train import cosine_schedule, evaluate, fit

from .conftest import TINY, run_cli


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_writes_every_file_and_metrics_that_mean_what_they_say(trained_run, synth_data):
    run = trained_run.run_dir
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.yaml", "confusion.png", "curves.png", "labels.json", "metrics.csv",
                     "model.tar.gz", "per_class.csv", "profile", "results.json"]
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
    for png in ("curves.png", "confusion.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_val_loss_is_a_mean_over_samples_independent_of_batch_size():
    torch.manual_seed(0)
    head = nn.Linear(16, 5)
    x, y = torch.randn(37, 16), torch.randint(0, 5, (37,))
    device = torch.device("cpu")
    losses = {bs: evaluate(head, TensorBatches(x, y, bs, shuffle=False), device=device).loss for bs in (1, 8, 29, 64)}
    expected = nn.functional.cross_entropy(head(x), y).item()
    for loss in losses.values():
        assert loss == pytest.approx(expected, rel=1e-5)


def test_early_stopping_keeps_the_best_epoch():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    head = nn.Linear(8, 4)
    train_batches = TensorBatches(x, torch.randint(0, 4, (64,)), 8, shuffle=True)
    val_batches = TensorBatches(x, torch.randint(0, 4, (64,)), 64, shuffle=False)  # unrelated labels: overfits
    opt = torch.optim.AdamW(head.parameters(), lr=0.05)
    state = fit(head, train_batches, val_batches, epochs=50, optimizer=opt, scheduler=cosine_schedule(opt, 400, "none"),
                device=torch.device("cpu"), patience=3)
    assert state.epoch < 50
    assert state.epoch - state.best_epoch == 3
    assert state.best_val_loss == min(r["val_loss"] for r in state.history)


def test_cached_and_image_paths_reach_the_same_kind_of_result(synth_data, tiny_weights, tmp_path):
    """One fit, two paths: the head on cached embeddings and the head on images agree."""
    common = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "epochs": 4,
              "aug_views": 2}
    cached = train(config.resolve(overrides={**common, "name": "cached"}), progress=False)
    images = train(config.resolve(overrides={**common, "name": "images", "feature_cache": False}), progress=False)
    for result in (cached, images):
        assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
        assert result.test["test_accuracy"] >= 0.75  # 4 classes: chance is 0.25
    assert abs(cached.test["test_accuracy"] - images.test["test_accuracy"]) <= 0.25
    assert abs(cached.history[-1]["val_loss"] - images.history[-1]["val_loss"]) < 0.5


def test_second_run_reuses_the_embedding_cache(synth_data, tiny_weights, tmp_path, capsys):
    overrides = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "epochs": 1,
                 "aug_views": 1, "cache_dir": str(tmp_path / "cache")}
    from dogbreed.cli import setup_logging

    setup_logging()
    train(config.resolve(overrides=overrides), progress=False)
    assert "0 hit(s), 3 computed" in capsys.readouterr().out
    train(config.resolve(overrides={**overrides, "lr": 0.01, "batch_size": 4}), progress=False)
    assert "3 hit(s), 0 computed" in capsys.readouterr().out  # trials that change the head reuse it
    train(config.resolve(overrides={**overrides, "image_size": 48}), progress=False)
    assert "0 hit(s), 3 computed" in capsys.readouterr().out  # a new transform is a new entry


def test_unfrozen_layer4_trains_on_images(synth_data, tmp_path):
    result = train(config.resolve(overrides={**TINY, "data": str(synth_data), "out": str(tmp_path), "epochs": 2,
                                             "train_layers": "layer4"}), progress=False)
    assert len(result.history) == 2 and result.artifact.is_file()


def test_bad_image_is_skipped_with_a_warning_in_worker_processes(data_copy, tmp_path):
    folder = data_copy / "train" / "002.Afghan_hound"
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])  # a valid header: found only when decoded
    proc = run_cli("train", "--data", str(data_copy), "--out", str(tmp_path), "--backbone", "resnet18", "--no-pretrained",
                   "--image-size", "64", "--epochs", "1", "--train-layers", "all", "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipping unreadable image" in proc.stderr and "truncated.jpg" in proc.stderr


def test_resume_continues_after_a_kill(synth_data, tmp_path):
    args = ["train", "--data", str(synth_data), "--out", str(tmp_path), "--name", "killed", "--backbone", "resnet18",
            "--no-pretrained", "--image-size", "64", "--train-layers", "all", "--workers", "0", "--epochs", "40",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(_rows(metrics)) >= 2:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _rows(metrics)
    done = len(before)
    assert 2 <= done < 40
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*tmp"))  # no half-written checkpoint left

    resumed = run_cli("train", "--resume", str(tmp_path / "killed"), "--epochs", str(done + 1), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'killed'} after epoch {done}" in resumed.stdout
    after = _rows(metrics)
    assert [r["epoch"] for r in after] == [str(i) for i in range(1, done + 2)]
    assert after[:done] == before[:done]
    assert (tmp_path / "killed" / "model.tar.gz").is_file()


def test_resume_refuses_to_change_the_recipe(trained_run, capsys):
    from dogbreed.cli import main

    assert main(["train", "--resume", str(trained_run.run_dir), "--lr", "0.1"]) == 1
    assert "lr cannot change" in capsys.readouterr().err


def test_corrupt_checkpoint_is_one_clear_line(synth_data, tmp_path):
    base = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--workers", "0", "--no-progress"]
    first = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path), "--name", "r", "--epochs", "1", *base)
    assert first.returncode == 0, first.stderr
    (tmp_path / "r" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    proc = run_cli("train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "checkpoint" in proc.stderr and "is corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_runs_unchanged_as_a_sagemaker_training_job(synth_data, tmp_path):
    """SageMaker's contract: data from SM_CHANNEL_TRAINING, hyperparameters as --snake_case flags,
    the model left unpacked in SM_MODEL_DIR, everything else in SM_OUTPUT_DATA_DIR."""
    env = {"SM_CHANNEL_TRAINING": str(synth_data), "SM_MODEL_DIR": str(tmp_path / "model"),
           "SM_OUTPUT_DATA_DIR": str(tmp_path / "output")}
    # Exactly how SageMaker starts an entry script: hyperparameters only, booleans as values.
    proc = subprocess.run(
        [sys.executable, "-m", "dogbreed.sagemaker", "--learning_rate", "0.003", "--batch_size", "8", "--epochs", "1",
         "--backbone", "resnet18", "--pretrained", "False", "--image_size", "64", "--workers", "0",
         "--train_layers", "all"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    model_dir = tmp_path / "model"
    assert {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")} >= {
        "model.pth", "labels.json", "model.json", "code", "code/inference.py", "code/presets.py", "code/network.py",
        "code/requirements.txt"}
    assert json.loads((model_dir / "model.json").read_text())["config"]["lr"] == 0.003
    assert list((tmp_path / "output").glob("*/metrics.csv"))
    assert "val_loss=" in proc.stdout and "test_accuracy=" in proc.stdout  # lines SageMaker metric regexes scrape


def test_resume_on_the_cached_path_reproduces_an_uninterrupted_run(synth_data, tiny_weights, tmp_path):
    common = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "aug_views": 2}
    whole = train(config.resolve(overrides={**common, "epochs": 4, "name": "whole"}), progress=False)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies after its second checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(config.resolve(overrides={**common, "epochs": 4, "name": "split"}), progress=False, on_epoch=stop_after_two)
    from dogbreed.run import resume_config

    rest = train(resume_config(tmp_path / "split", {}), resume=tmp_path / "split", progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    # Model, optimizer, schedule and batch order all continue where they stopped.
    assert strip(rest.history) == strip(whole.history)
    assert rest.test == whole.test


def test_checkpoints_carry_the_config(trained_run):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(trained_run.run_dir / "checkpoints" / name, weights_only=True)
        assert ckpt["config"]["backbone"] == "resnet18" and ckpt["config"]["epochs"] == 4


def test_frozen_layers_keep_their_weights_and_batchnorm_statistics_in_a_real_run(synth_data, tiny_weights, tmp_path):
    from dogbreed.archive import safe_extract_tar

    result = train(config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(tiny_weights),
                                             "out": str(tmp_path), "epochs": 2, "train_layers": "layer4"}), progress=False)
    safe_extract_tar(result.artifact, tmp_path / "model")
    trained = torch.load(tmp_path / "model" / "model.pth", weights_only=True)
    start = torch.load(tiny_weights, weights_only=True)
    for key in ("bn1.running_mean", "bn1.running_var", "layer1.0.conv1.weight", "layer3.1.bn2.running_mean"):
        assert torch.equal(trained[key], start[key]), key  # frozen: untouched, statistics included
    assert not torch.equal(trained["layer4.0.conv1.weight"], start["layer4.0.conv1.weight"])  # trained


def test_a_split_with_no_readable_image_is_one_line_and_leaves_nothing(data_copy, tmp_path):
    for f in (data_copy / "valid").rglob("*.jpg"):
        f.write_bytes(f.read_bytes()[:200])  # valid headers, truncated pixels
    proc = run_cli("train", "--data", str(data_copy), "--out", str(tmp_path / "runs"), "--backbone", "resnet18",
                   "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image could be decoded while embedding valid")
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # the run folder was removed


def test_a_finished_run_leaves_no_worker_processes_behind(synth_data, tmp_path):
    import gc

    import psutil

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


def test_resuming_a_finished_run_says_so_and_a_failed_resume_changes_nothing(trained_run, tmp_path, capsys):
    import shutil

    assert main(["train", "--resume", str(trained_run.run_dir)]) == 1
    assert f"{trained_run.run_dir} has finished (4 epochs" in capsys.readouterr().err
    copy = Path(shutil.copytree(trained_run.run_dir, tmp_path / "copy"))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(copy), "--epochs", "6", "--data", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before  # status, profile, checkpoints untouched


def test_a_run_started_with_relative_paths_resumes_from_anywhere(synth_data, tmp_path):
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"]
    first = run_cli("train", "--data", synth_data.name, "--out", str(tmp_path / "runs"), "--name", "rel", "--epochs", "1",
                    "--no-pretrained", "--no-profile", "--no-progress", *tiny, cwd=synth_data.parent)
    assert first.returncode == 0, first.stderr
    saved = yaml.safe_load((tmp_path / "runs" / "rel" / "config.yaml").read_text())
    assert saved["data"] == str(synth_data.resolve())
    resumed = run_cli("train", "--resume", str(tmp_path / "runs" / "rel"), "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
