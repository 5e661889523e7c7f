"""Checkpoints and resume: a killed run continues where it stopped."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dogbreed import config
from dogbreed.checkpoints import resume_config
from dogbreed.cli import main
from dogbreed.run import train

from .conftest import TINY, run_cli


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))

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

def test_resume_on_the_cached_path_reproduces_an_uninterrupted_run(synth_data, tiny_weights, tmp_path):
    common = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "aug_views": 2}
    whole = train(config.resolve(overrides={**common, "epochs": 4, "name": "whole"}), progress=False)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies after its second checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(config.resolve(overrides={**common, "epochs": 4, "name": "split"}), progress=False, on_epoch=stop_after_two)
    rest = train(resume_config(tmp_path / "split", {}), resume=tmp_path / "split", progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    # Model, optimizer, schedule and batch order all continue where they stopped.
    assert strip(rest.history) == strip(whole.history)
    assert rest.test == whole.test

def test_checkpoints_carry_the_config(trained_run):
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(trained_run.run_dir / "checkpoints" / name, weights_only=True)
        assert ckpt["config"]["backbone"] == "resnet18" and ckpt["config"]["epochs"] == 4

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
    out = tmp_path / "runs"
    first = run_cli("train", "--data", synth_data.name, "--out", os.path.relpath(out, synth_data.parent), "--name", "rel",
                    "--epochs", "1",
                    "--no-pretrained", "--no-profile", "--no-progress", *tiny, cwd=synth_data.parent)
    assert first.returncode == 0, first.stderr
    saved = yaml.safe_load((out / "rel" / "config.yaml").read_text())
    assert saved["data"] == str(synth_data.resolve()) and saved["out"] == str(out.resolve())
    resumed = run_cli("train", "--resume", str(tmp_path / "runs" / "rel"), "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_a_run_killed_before_its_first_epoch_resumes_from_epoch_1(synth_data, tiny_weights, tmp_path):
    """Killed while embedding (the long part of a cached run's start): its config is saved, no epoch
    is. The resume trains it from epoch 1 with that config, without being told anything again."""
    run = tmp_path / "runs" / "early"
    args = ["train", "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--name", "early", "--weights",
            str(tiny_weights), "--cache-dir", str(tmp_path / "cache"), "--aug-views", "8", "--epochs", "3",
            *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"), "--no-pretrained",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None and not (run / "config.yaml").exists():
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / "config.yaml").is_file()
    for ckpt in (run / "checkpoints").glob("*.pt"):  # a machine fast enough to finish an epoch first: as if it had not
        ckpt.unlink()
    resumed = run_cli("train", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "it has no finished epoch, so it trains from epoch 1 with its saved config" in resumed.stdout
    assert [r["epoch"] for r in _rows(run / "metrics.csv")] == ["1", "2", "3"]
    assert (run / "model.tar.gz").is_file()
