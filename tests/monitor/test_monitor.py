"""A profiled run end to end: the files it writes, what they hold, live rules and the stop action,
resume, and a run killed mid-way that `dogbreed report` still reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dogbreed import config
from dogbreed.monitor.rules import RULES
from dogbreed.monitor.streams import load_profile, read_jsonl
from dogbreed.run import train

from ..conftest import TINY, run_cli
from .conftest import PROFILED


def test_a_profiled_run_writes_every_file(profiled_run):
    folder = profiled_run.run_dir / "profile"
    for name in ("meta.json", "system.jsonl", "steps.jsonl", "tensors.jsonl", "events.jsonl", "report.html",
                 "timeline.png", "trace/trace.json", "trace/cprofile.prof", "trace/cprofile.txt", "trace/ops.txt"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    assert sorted(p.stem for p in (folder / "rules").glob("*.json")) == sorted(RULES)
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    trace = json.loads((folder / "trace" / "trace.json").read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    assert "cumulative" in (folder / "trace" / "cprofile.txt").read_text()
    assert not list(folder.rglob("*.tmp"))


def test_steps_cover_every_phase_with_data_wait_and_compute(profiled_run):
    profile = load_profile(profiled_run.run_dir)
    assert profile.meta["status"] == "completed" and profile.damaged_lines == 0
    train_steps = [s for s in profile.steps if s["phase"] == "train"]
    assert [s["step"] for s in train_steps] == list(range(12))  # 48 images / batch 8 = 6 steps x 2 epochs
    assert {s["epoch"] for s in train_steps} == {1, 2}
    assert {s["phase"] for s in profile.steps} == {"train", "eval", "test"}
    assert all(s["data"] >= 0 and s["compute"] > 0 for s in profile.steps)
    loaders = profile.meta["loaders"]
    assert loaders["train"] == {"kind": "images", "workers": 0, "pin_memory": False, "persistent_workers": False,
                                "batch_size": 8, "prefetch_factor": None}
    epochs = [e for e in profile.events if e.get("event") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["step"] == 12
    per_class = [e for e in profile.events if e.get("event") == "per_class"]
    assert per_class and sum(per_class[0]["n"]) == 8


def test_system_samples_record_absent_hardware_as_absent(profiled_run):
    profile = load_profile(profiled_run.run_dir)
    hardware = profile.meta["hardware"]
    assert hardware["cpu_cores"] >= 1 and hardware["memory_total"] > 0
    assert bool(hardware["gpus"]) == torch.cuda.is_available()
    assert len(profile.system) >= 3
    for s in profile.system:
        assert 0 <= s["cpu"] <= 100 and len(s["cores"]) == hardware["cpu_cores"] and s["rss"] > 0
        assert ("gpus" in s) == bool(hardware["gpus"])
    rules = {r["rule"]: r for r in (json.loads(p.read_text()) for p in (profile.folder / "rules").glob("*.json"))}
    if not hardware["gpus"]:
        assert rules["LowGPUUtilization"]["status"] == "not applicable: no NVIDIA GPU on this machine"


def test_debugger_tensors_skip_frozen_parameters(profiled_run):
    profile = load_profile(profiled_run.run_dir)
    names = profile.meta["tensors"]["parameters"]
    assert names and all(n.startswith(("layer4.", "fc.")) for n in names)
    assert "fc.weight" in names and not any(n.startswith("conv1") for n in names)
    steps = [r["step"] for r in profile.tensors]
    assert steps == list(range(10)) + [10]  # every step for the first 10, then every debug_interval (2)
    early, late = profile.tensors[0], profile.tensors[-1]
    assert len(early["grad_l2"]) == len(names) and len(early["grad_range"]) == len(names)
    assert early["relu"] and all(0 <= a <= 1 for v in early["relu"].values() for a in v["active"])
    assert "relu" not in late and "grad_range" not in late
    for r in profile.tensors:
        assert float(r["loss"]) > 0 and all(float(v) > 0 for v in r["grad_l2"])
        assert all(v == "nan" or float(v) >= 0 for v in r["update_ratio"])


def test_the_cached_path_profiles_the_embedding_pass_and_the_head(synth_data, tiny_weights, tmp_path):
    cfg = config.resolve(overrides={**PROFILED, "data": str(synth_data), "weights": str(tiny_weights), "epochs": 2,
                                    "out": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "name": "cached"})
    profile = load_profile(train(cfg, progress=False).run_dir)
    assert profile.meta["path"] == "cached embeddings"
    assert profile.meta["tensors"]["parameters"] == ["fc.weight", "fc.bias"]
    assert profile.meta["loaders"]["embed"]["kind"] == "images"
    assert profile.meta["loaders"]["train"]["kind"] == "cached embeddings in memory"
    assert {"embed", "train", "eval", "test"} <= {s["phase"] for s in profile.steps}
    rules = {r["rule"]: r for r in (json.loads(p.read_text()) for p in (profile.folder / "rules").glob("*.json"))}
    assert rules["DeadRelu"]["status"].startswith("not applicable")
    assert rules["Dataloader"]["details"]["loaders"]["embed"]["workers"] == 0


def test_a_live_rule_with_the_stop_action_ends_training(synth_data, tmp_path, caplog):
    rules = tmp_path / "rules.yaml"
    rules.write_text("Overfit: {ratio_threshold: -1, action: stop}\n")  # fires on the first epoch
    cfg = config.resolve(overrides={**PROFILED, "data": str(synth_data), "out": str(tmp_path / "runs"),
                                    "train_layers": "all", "epochs": 6, "rules": str(rules), "name": "stopped"})
    with caplog.at_level("WARNING"):
        result = train(cfg, progress=False)
    assert len(result.history) < 6
    profile = load_profile(result.run_dir)
    assert profile.meta["status"] == "stopped" and profile.meta["stopped_by"] == "Overfit"
    assert any(e.get("event") == "stop" and e["rule"] == "Overfit" for e in profile.events)
    assert "rule Overfit triggered" in caplog.text
    assert (profile.folder / "rules.yaml").read_text() == rules.read_text()  # `dogbreed report` reuses them
    assert result.artifact.exists()  # a stopped run still ends with its best epoch packaged


def test_a_stop_rule_ends_a_cached_run_after_the_epoch_that_triggered_it(synth_data, tiny_weights, tmp_path, caplog):
    """On cached embeddings a run's epochs take milliseconds, less than one monitor interval: the
    rules still see each epoch before the next one starts."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("Overfit: {ratio_threshold: -1, action: stop}\n")  # fires on the first epoch
    cfg = config.resolve(overrides={**PROFILED, "data": str(synth_data), "weights": str(tiny_weights), "epochs": 9,
                                    "out": str(tmp_path / "runs"), "rules": str(rules), "profile_interval_ms": 5000})
    with caplog.at_level("WARNING"):
        result = train(cfg, progress=False)
    assert len(result.history) == 1  # stopped after epoch 1, where Overfit triggered
    profile = load_profile(result.run_dir)
    assert profile.meta["status"] == "stopped" and profile.meta["stopped_by"] == "Overfit"
    assert json.loads((result.run_dir / "results.json").read_text())["epochs_run"] == 1
    warnings = caplog.text.splitlines()
    triggered = next(i for i, line in enumerate(warnings) if "rule Overfit triggered" in line)
    assert "stopping training: rule Overfit has action stop" in warnings[triggered + 1]


def test_resume_appends_to_the_profile(synth_data, tmp_path):
    from dogbreed.checkpoints import resume_config

    cfg = config.resolve(overrides={**PROFILED, "data": str(synth_data), "out": str(tmp_path / "runs"),
                                    "train_layers": "all", "epochs": 1, "name": "resumed"})
    first = train(cfg, progress=False)
    train(resume_config(first.run_dir, {"epochs": 2}), resume=first.run_dir, progress=False)
    profile = load_profile(first.run_dir)
    assert len(profile.meta["resumed"]) == 1 and profile.meta["status"] == "completed"
    train_steps = [s["step"] for s in profile.steps if s["phase"] == "train"]
    assert train_steps == list(range(12))  # the resumed epoch goes on from step 6


def test_no_profile_writes_nothing_and_report_says_how_to_get_one(synth_data, tmp_path):
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "out": str(tmp_path / "runs"), "train_layers": "all",
                                    "epochs": 1, "profile": False, "name": "plain"})
    run_dir = train(cfg, progress=False).run_dir
    assert not (run_dir / "profile").exists()
    proc = run_cli("report", str(run_dir))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir} has no profile data ({run_dir}/profile/meta.json is missing); train with profiling on "
        "(`dogbreed train --profile ...`, the default) to collect it"]


def test_a_killed_run_is_reported_from_what_was_collected(synth_data, tmp_path):
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dogbreed", "train", "--data", str(synth_data), "--out", str(tmp_path / "runs"),
         "--name", "killed", "--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--workers", "0",
         "--train-layers", "all", "--epochs", "200", "--profile-interval-ms", "100", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    steps = run_dir / "profile" / "steps.jsonl"
    deadline = time.monotonic() + 120
    try:
        while len(read_jsonl(steps)[0]) < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(read_jsonl(steps)[0]) >= 8, "the run never got going"
    with open(steps, "a") as f:  # a line cut mid-write
        f.write('{"t": 17956')
    report = run_cli("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert "did not finish (status: running)" in report.stdout
    page = (run_dir / "profile" / "report.html").read_text()
    assert "This run did not finish" in page and "1 partial or damaged line(s)" in page
    assert "partial or damaged line" in report.stderr


def test_records_without_their_fields_are_skipped_not_a_traceback(profiled_run, tmp_path):
    import shutil

    run_dir = Path(shutil.copytree(profiled_run.run_dir, tmp_path / "copy"))
    for stream, line in (("steps", '{"t": 1.0}'), ("events", '{"event": "epoch"}'), ("system", "[1, 2]"),
                         ("tensors", '{"t": "soon", "step": 1, "epoch": 1, "loss": 1}')):
        with open(run_dir / "profile" / f"{stream}.jsonl", "a") as f:  # valid JSON, not a record
            f.write(line + "\n")
    report = run_cli("report", str(run_dir))
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    assert "skipped 4 partial or damaged line(s)" in report.stderr
    assert "4 partial or damaged line(s)" in (run_dir / "profile" / "report.html").read_text()


def test_a_bad_rules_file_stops_training_before_it_starts(synth_data, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("StepOutlier: {sigma: 3}\n")
    proc = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--backbone", "resnet18",
                   "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--rules", str(rules))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: rules file {rules}: rule StepOutlier has no parameter 'sigma'; its parameters: stddev, n_outliers, mode, "
        "every, action"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-made


def test_a_torchrun_rank_with_its_own_share_of_workers_does_not_trip_the_dataloader_rule(synth_data, tmp_path):
    """Under torchrun each rank decodes with its share of the machine's cores (dogbreed's own choice
    when --workers is not given): the Dataloader rule counts its workers against that share."""
    from dogbreed.context import prepare
    from dogbreed.data.loaders import ImageDataset, image_loader
    from dogbreed.distributed import SHARE, Ranks
    from dogbreed.monitor import Monitor
    from dogbreed.monitor.report import write_report

    ranks = Ranks(rank=0, world=2, local_world=2, role=SHARE)  # rank 0 of 2 on this machine: it profiles
    own = {k: v for k, v in TINY.items() if k != "workers"}
    ctx = prepare(config.resolve(overrides={**own, "data": str(synth_data), "out": str(tmp_path)}), ranks)
    monitor = Monitor(tmp_path / "run", device=torch.device("cpu"), meta={}, ranks=ranks)
    dataset = ImageDataset(ctx.data.splits["train"], ctx.preset)
    monitor.describe_loader("embed", image_loader(dataset, 64, shuffle=False, workers=ctx.feed.workers,
                                                  device=torch.device("cpu")))
    monitor.close()
    write_report(tmp_path / "run")  # the rules, run again over what the profile holds
    rule = json.loads((tmp_path / "run" / "profile" / "rules" / "Dataloader.json").read_text())
    assert rule["datapoints"] == 1 and rule["triggers"] == 0, rule
    assert rule["details"]["loaders"]["embed"]["percent_of_cores"] == 100


@pytest.mark.parametrize("by_design", [True, False])
def test_a_loader_that_decodes_in_the_process_by_design_does_not_trip_the_dataloader_rule(synth_data, tmp_path,
                                                                                         by_design):
    """The CPU embedding decodes between the backbone's batches where torch's threads take every
    core (``FeatureCache._decoders``): its loader has no workers by design, which the rule notes and
    does not flag. A loader left without workers otherwise (``--workers 0``) is still flagged."""
    from dogbreed.context import prepare
    from dogbreed.data.loaders import ImageDataset, image_loader
    from dogbreed.features import IN_PROCESS
    from dogbreed.monitor import Monitor
    from dogbreed.monitor.report import write_report

    ctx = prepare(config.resolve(overrides={**TINY, "data": str(synth_data), "out": str(tmp_path)}))
    monitor = Monitor(tmp_path / "run", device=torch.device("cpu"), meta={})
    loader = image_loader(ImageDataset(ctx.data.splits["train"], ctx.preset), 64, shuffle=False, workers=0,
                          device=torch.device("cpu"))
    monitor.describe_loader("embed", loader, in_process=IN_PROCESS if by_design else None)
    monitor.close()
    write_report(tmp_path / "run")
    rule = json.loads((tmp_path / "run" / "profile" / "rules" / "Dataloader.json").read_text())
    assert rule["datapoints"] == 1 and rule["triggers"] == (0 if by_design else 1), rule
    assert any(IN_PROCESS in note for note in rule["details"].get("notes", [])) == by_design
