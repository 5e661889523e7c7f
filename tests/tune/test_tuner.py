"""``dogbreed tune`` end to end on its default embedded storage (SQLite) with worker processes."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from dogbreed.cli import main

from ..conftest import TINY, free_port


def tune_args(data, out, *extra):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"]
    return ["tune", "--data", str(data), "--out", str(out), "--no-pretrained", "--no-progress", *flags, *extra]


@pytest.fixture(scope="module")
def study(synth_data, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    cache = out / "cache"
    args = tune_args(synth_data, out, "--weights", str(tiny_weights), "--cache-dir", str(cache), "--trials", "6",
                     "--parallel", "2", "--heartbeat", "2")
    assert main(args) == 0
    return out, args, cache


def test_study_finishes_with_every_planned_trial_and_a_final_run(study):
    out, _, _ = study
    folder = out / "tune-dogbreed"
    best = json.loads((folder / "best.json").read_text())
    assert sum(best["trials"].values()) == 6 and best["trials"]["FAIL"] == 0
    assert best["direction"] == "minimize" and best["objective"] == "val_loss"
    assert set(best["best_trial"]["params"]) == {"lr", "batch_size", "epochs"}
    assert (folder / "best" / "model.tar.gz").is_file()
    assert best["final_run"]["artifact"].endswith("best/model.tar.gz") and 0 <= best["final_run"]["test_accuracy"] <= 1
    lines = (folder / "trials.csv").read_text().splitlines()
    assert lines[0].startswith("number,state,value,param_batch_size,param_epochs,param_lr")
    assert len(lines) == 7
    workers = {line.split(",")[-2] for line in lines[1:]}
    assert len(workers) == 2  # both local worker processes ran trials
    assert sorted(p.name for p in (folder / "trials").iterdir()) == [f"trial-{i:03d}" for i in range(6)]  # none twice
    assert not list((folder / "trials").glob("*/checkpoints"))  # removed when each trial ended
    # Trials run unobserved; the final run (a normal training) is profiled like any other.
    assert not any((folder / "trials" / t / "profile").exists() for t in ("trial-000", "trial-005"))
    assert (folder / "best" / "profile" / "report.html").is_file()


def test_rerunning_a_finished_study_reuses_its_final_run(study, capsys):
    out, args, _ = study
    best = json.loads((out / "tune-dogbreed" / "best.json").read_text())
    assert main(args) == 0
    assert f"final training already done for trial {best['best_trial']['number']}" in capsys.readouterr().out
    assert not (out / "tune-dogbreed" / "best-2").exists()
    assert json.loads((out / "tune-dogbreed" / "best.json").read_text())["final_run"] == best["final_run"]


def test_plots_are_written_as_png_and_offline_html(study):
    plots = study[0] / "tune-dogbreed" / "plots"
    for name in ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate"):
        assert (plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        html = (plots / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in html and "cdn" not in html.split("<body>")[0].lower()  # opens offline
    assert (plots / "plotly.min.js").stat().st_size > 1_000_000


def test_all_trials_share_one_embedding_extraction(study):
    cache = study[2]
    assert len(list(cache.glob("*.pt"))) == 4  # 2 augmented train views + valid + test, for 6 trials + final run


def test_rerunning_the_command_resumes_and_more_trials_extend(study, capsys):
    out, args, _ = study
    capsys.readouterr()
    assert main([*args, "--no-final"]) == 0
    assert "study dogbreed joined" in capsys.readouterr().out
    assert len((out / "tune-dogbreed" / "trials.csv").read_text().splitlines()) == 7  # nothing new to run
    more = [a if a != "6" else "7" for a in args]
    assert main([*more, "--no-final", "--parallel", "1"]) == 0
    assert len((out / "tune-dogbreed" / "trials.csv").read_text().splitlines()) == 8


def test_show_prints_the_table_and_best_trial(study, capsys):
    out = study[0]
    capsys.readouterr()
    assert main(["tune", "show", "dogbreed", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("\ntrial ") + text.startswith("trial ") >= 6
    assert "best: trial" in text


def test_show_of_an_unknown_study_lists_the_known_ones(study, capsys):
    capsys.readouterr()
    assert main(["tune", "show", "nope", "--out", str(study[0])]) == 1
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "studies there: dogbreed" in err


def test_same_study_name_with_another_space_is_refused(study, tmp_path, capsys):
    out, args, _ = study
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    capsys.readouterr()
    assert main([*args, "--space", str(space)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study 'dogbreed' exists with a different setup (space: batch_size, epochs, lr differ;")
    assert "--study NEW_NAME" in err
    assert "\n" not in err


def test_objective_val_accuracy_is_maximized(synth_data, tiny_weights, tmp_path):
    assert main(tune_args(synth_data, tmp_path, "--weights", str(tiny_weights), "--trials", "2", "--parallel", "1",
                          "--objective", "val_accuracy", "--pruner", "none", "--sampler", "random", "--no-final")) == 0
    best = json.loads((tmp_path / "tune-dogbreed" / "best.json").read_text())
    assert best["direction"] == "maximize" and 0 <= best["best_trial"]["value"] <= 1
    assert "final_run" not in best


@pytest.mark.parametrize("extra, match", [
    (["--trials", "0"], "--trials must be at least 1, got 0"),
    (["--sampler", "bayes"], "--sampler 'bayes' is not valid; choose one of: tpe, random, grid"),
    (["--parallel", "0"], "--parallel must be at least 1, got 0"),
])
def test_bad_options_are_one_line(synth_data, tmp_path, capsys, extra, match):
    assert main(tune_args(synth_data, tmp_path, *extra)) == 1
    assert capsys.readouterr().err.strip() == f"error: {match}"
    assert not (tmp_path / "tune.db").exists()  # refused before any storage was touched


def test_unreachable_storage_is_one_line(synth_data, tmp_path, capsys):
    port = free_port()
    url = f"postgresql://tuner:secret@127.0.0.1:{port}/studies"
    assert main(tune_args(synth_data, tmp_path, "--storage", url)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot open storage postgresql://tuner:***@127.0.0.1:{port}/studies (connection")
    assert "secret" not in err and "\n" not in err


def test_trials_that_unfreeze_layers_train_on_images(synth_data, tiny_weights, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
                     "train_layers: {type: categorical, choices: [layer4]}\n")
    assert main(tune_args(synth_data, tmp_path, "--weights", str(tiny_weights), "--space", str(space), "--trials", "2",
                          "--parallel", "1", "--epochs", "2", "--pruner", "none", "--no-final")) == 0
    best = json.loads((tmp_path / "tune-dogbreed" / "best.json").read_text())
    assert best["trials"]["COMPLETE"] == 2 and best["best_trial"]["params"]["train_layers"] == "layer4"
    assert not (tmp_path / "tune-dogbreed" / "trials" / "trial-000" / "checkpoints").exists()  # trial checkpoints go


def test_grid_sampler_runs_each_point_once(synth_data, tiny_weights, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: categorical, choices: [0.001, 0.01]}\nepochs: {type: int, low: 1, high: 2}\n")
    args = tune_args(synth_data, tmp_path, "--weights", str(tiny_weights), "--space", str(space), "--sampler", "grid",
                     "--trials", "9", "--pruner", "none", "--no-final")
    assert main(args) == 0
    assert "the grid has 4 points, so 4 trials instead of 9" in capsys.readouterr().out
    best = json.loads((tmp_path / "tune-dogbreed" / "best.json").read_text())
    assert best["trials"] == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0}
    rows = (tmp_path / "tune-dogbreed" / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    points = {(r[header.index("param_lr")], r[header.index("param_epochs")]) for r in (line.split(",") for line in rows[1:])}
    assert points == {("0.001", "1"), ("0.001", "2"), ("0.01", "1"), ("0.01", "2")}


def test_a_study_where_every_trial_fails_exits_non_zero(synth_data, tiny_weights, tmp_path, capsys):
    space = tmp_path / "space.yaml"  # resnet18 weights cannot start a resnet34: every trial fails when it loads them
    space.write_text("backbone: {type: categorical, choices: [resnet34]}\n")
    args = tune_args(synth_data, tmp_path, "--weights", str(tiny_weights), "--space", str(space), "--trials", "2", "--no-final")
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "no trial completed (2 failed, 0 pruned); the first error:" in err


@pytest.mark.parametrize("space, message", [
    ("backbone: {type: categorical, choices: [resnet18, resnet999]}\n", "backbone = 'resnet999' is not usable (backbone 'resnet999' is not valid"),
    ("lr: {type: float, low: -0.01, high: 0.01}\n", "lr = -0.01 is not usable (lr must be a positive number"),
])
def test_a_space_that_cannot_train_is_refused_before_the_study(synth_data, tmp_path, capsys, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    assert main(tune_args(synth_data, tmp_path / "out", "--space", str(path))) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "tune.db").exists()


def test_missing_data_is_said_before_a_study_is_made(tmp_path, capsys):
    assert main(tune_args(tmp_path / "nope", tmp_path / "out")) == 1
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "out" / "tune.db").exists()


def test_show_does_not_create_a_database(tmp_path, capsys):
    assert main(["tune", "show", "dogbreed", "--out", str(tmp_path)]) == 1
    assert "no study database at" in capsys.readouterr().err and not (tmp_path / "tune.db").exists()


def test_workers_end_when_the_command_is_killed_outright(synth_data, tmp_path):
    # Trials on images (no embedding cache) are long enough to kill in the middle of.
    args = tune_args(synth_data, tmp_path, "--trials", "4", "--parallel", "2", "--no-feature-cache", "--epochs", "30",
                     "--pruner", "none", "--no-final")
    parent = subprocess.Popen([sys.executable, "-m", "dogbreed", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [p for p in psutil.Process(parent.pid).children() if "multiprocessing" in " ".join(p.cmdline())
                       and "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert len(workers) == 2, "the two worker processes did not start"
        time.sleep(3)  # into their first trials
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived the killed `dogbreed tune`: {[p.pid for p in alive]}"
    finally:  # only what this test started: a session's server may be a child of this process too
        if parent.poll() is None:
            parent.kill()
        for p in workers:
            if p.is_running():
                p.kill()


def in_session(sid: int) -> list[psutil.Process]:
    """Every process of the session ``sid``: all that a command started, even those orphaned since
    (their parent is then pid 1, so no walk down from the command finds them)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except OSError:  # ended while we looked
            pass
    return found


def test_nothing_outlives_a_tune_killed_while_its_loader_workers_start(synth_data, tmp_path):
    """`kill -9` as the trials' DataLoader workers start (spawned: they import torch for seconds, and
    a worker whose parent died meanwhile would take pid 1 for its parent and live on): every process
    the command started ends, the loader workers and the resource tracker too."""
    args = tune_args(synth_data, tmp_path, "--trials", "2", "--parallel", "2", "--train-layers", "layer4",
                     "--workers", "2", "--epochs", "30", "--pruner", "none", "--no-final")
    tune = subprocess.Popen([sys.executable, "-m", "dogbreed", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # its session: all it starts
    try:
        deadline = time.monotonic() + 180
        loader_workers = []
        while time.monotonic() < deadline and tune.poll() is None and not loader_workers:
            try:  # a trial worker's children: the loader workers, the moment they are started
                loader_workers = [p for p in psutil.Process(tune.pid).children(recursive=True) if p.ppid() != tune.pid]
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
        assert loader_workers, "no trial started its DataLoader workers"
        tune.send_signal(signal.SIGKILL)
        tune.wait()
        deadline = time.monotonic() + 90
        while in_session(tune.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name(), p.ppid()) for p in in_session(tune.pid)]
        assert not left, f"processes outlived the killed `dogbreed tune`: {left}"
    finally:  # only what this test started: its session
        if tune.poll() is None:
            tune.kill()
        for p in in_session(tune.pid):
            p.kill()


def test_ctrl_c_fails_the_running_trials_for_the_next_run_and_ends_every_process_quietly(synth_data, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while both workers train on images: each
    running trial is FAIL with a waiting retry for the next run, no trial is left RUNNING, every
    process ends, and no traceback or leaked-semaphore warning is printed."""
    import optuna

    args = tune_args(synth_data, tmp_path, "--trials", "2", "--parallel", "2", "--train-layers", "layer4",
                     "--workers", "2", "--epochs", "100", "--pruner", "none", "--no-final")
    tune = subprocess.Popen([sys.executable, "-m", "dogbreed", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as a terminal's job
    try:
        deadline = time.monotonic() + 180
        training = set()  # the workers whose loaders' workers run (named so once they started)
        while time.monotonic() < deadline and tune.poll() is None and len(training) < 2:
            try:
                training = {p.ppid() for p in psutil.Process(tune.pid).children(recursive=True)
                            if p.name() == "pt_data_worker"}
            except psutil.Error:  # a process ended while we looked
                pass
            time.sleep(0.2)
        assert len(training) == 2, "the two workers did not start training"
        os.killpg(tune.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = tune.communicate(timeout=180)
        deadline = time.monotonic() + 60
        while in_session(tune.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not in_session(tune.pid), "processes outlived the interrupted `dogbreed tune`"
    finally:
        if tune.poll() is None:
            tune.kill()
        for p in in_session(tune.pid):
            p.kill()
    assert tune.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert "Traceback" not in err and "leaked" not in err, err
    trials = optuna.load_study(study_name="dogbreed", storage=f"sqlite:///{tmp_path / 'tune.db'}").trials
    states = [t.state.name for t in trials]
    assert sorted(states) == ["FAIL", "FAIL", "WAITING", "WAITING"], states
    retried = sorted(t.system_attrs["failed_trial"] for t in trials if t.state.name == "WAITING")
    assert retried == sorted(t.number for t in trials if t.state.name == "FAIL")


def test_a_final_run_killed_before_its_artifact_is_resumed_in_place(synth_data, tiny_weights, tmp_path, capsys):
    """`kill -9` during the final training leaves best/ with checkpoints and no artifact: the rerun
    finishes that run in best/ (never best-2), and a best/ of other hyperparameters is replaced."""
    args = tune_args(synth_data, tmp_path, "--weights", str(tiny_weights), "--cache-dir", str(tmp_path / "cache"),
                     "--trials", "2", "--parallel", "1")
    assert main(args) == 0
    best_dir = tmp_path / "tune-dogbreed" / "best"
    best_json = tmp_path / "tune-dogbreed" / "best.json"
    for name in ("model.tar.gz", "results.json"):  # what a kill in the final run's last epochs leaves
        (best_dir / name).unlink()
    doc = json.loads(best_json.read_text())
    best_json.write_text(json.dumps({k: v for k, v in doc.items() if k != "final_run"}))
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming the final training in" in capsys.readouterr().out
    assert (best_dir / "model.tar.gz").is_file() and not (best_dir.parent / "best-2").exists()

    saved = yaml.safe_load((best_dir / "config.yaml").read_text())  # now as if best/ held an earlier best trial's run
    (best_dir / "config.yaml").write_text(yaml.safe_dump({**saved, "lr": 0.5}))
    best_json.write_text(json.dumps({k: v for k, v in doc.items() if k != "final_run"}))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "replacing" in out and "final training with the best hyperparameters" in out
    assert (best_dir / "model.tar.gz").is_file() and not (best_dir.parent / "best-2").exists()
