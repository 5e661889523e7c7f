"""Distributed tuning on a real PostgreSQL: separate ``dogbreed tune`` processes share one study."""

import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from ..conftest import TINY


def worker(data, out, url, study, *extra):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"]
    cmd = [sys.executable, "-m", "dogbreed", "tune", "--data", str(data), "--out", str(out), "--storage", url,
           "--study", study, "--parallel", "1", "--no-pretrained", "--no-progress", "--no-final", *flags, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def states(url, study):
    s = optuna.load_study(study_name=study, storage=url)
    return s, [t.state for t in s.get_trials(deepcopy=False)]


def test_two_workers_split_one_study(synth_data, tiny_weights, tmp_path, postgres_url):
    common = ("--weights", str(tiny_weights), "--trials", "8", "--heartbeat", "2")
    procs = [worker(synth_data, tmp_path / f"machine{i}", postgres_url, "split", *common) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study, got = states(postgres_url, "split")
    assert len(got) == 8 and set(got) <= {TrialState.COMPLETE, TrialState.PRUNED}
    runners = [t.user_attrs["worker"] for t in study.trials]
    assert len(set(runners)) == 2  # both processes worked on the study
    ran = [sorted(p.name for p in (tmp_path / f"machine{i}" / "tune-split" / "trials").iterdir()) for i in range(2)]
    assert not set(ran[0]) & set(ran[1]) and len(ran[0]) + len(ran[1]) == 8  # no trial ran twice
    assert study.best_trial.state == TrialState.COMPLETE
    assert study.best_trial.value == min(t.value for t in study.trials if t.state == TrialState.COMPLETE)


def test_a_killed_worker_leaves_the_study_consistent(synth_data, tmp_path, postgres_url):
    # Trials on images (no embedding cache) last long enough to be killed in the middle of one.
    common = ("--trials", "5", "--heartbeat", "1", "--no-feature-cache", "--pruner", "none")
    survivor = worker(synth_data, tmp_path / "a", postgres_url, "kill", *common)
    victim = worker(synth_data, tmp_path / "b", postgres_url, "kill", *common)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                _, got = states(postgres_url, "kill")
            except KeyError:  # the study is not created yet
                got = []
            if got.count(TrialState.RUNNING) == 2:
                break
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        _, err = survivor.communicate(timeout=300)
    finally:
        for p in (survivor, victim):
            if p.poll() is None:
                p.kill()
    assert survivor.returncode == 0, err
    study, got = states(postgres_url, "kill")
    assert TrialState.RUNNING not in got and TrialState.WAITING not in got
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1  # the killed worker's trial, failed by the survivor's heartbeat check
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params.items() >= failed[0].params.items()  # it may die before suggesting all
    assert sum(s == TrialState.COMPLETE for s in got) == 5
