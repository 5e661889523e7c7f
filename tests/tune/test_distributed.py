"""Distributed tuning on a real PostgreSQL: separate worker processes share one study, and each
holds a bounded number of connections (docs/tuning.md)."""

import collections
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from dogbreed.tune.study import APPLICATION_NAME, CONNECTIONS_PER_PROCESS, open_storage

from ..conftest import TINY


def worker(data, out, url, study, *extra):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"]
    cmd = [sys.executable, "-m", "dogbreed", "tune", "--data", str(data), "--out", str(out), "--storage", url,
           "--study", study, "--parallel", "1", "--no-pretrained", "--no-progress", "--no-final", *flags, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def storage(postgres_url):
    """The test's own view of the study database: one storage, disposed at the end (a storage per
    poll would open a connection each time)."""
    s = open_storage(postgres_url, 1)
    yield s
    s.engine.dispose()


def states(storage, study):
    s = optuna.load_study(study_name=study, storage=storage)
    return s, [t.state for t in s.get_trials(deepcopy=False)]


class ConnectionWatch(threading.Thread):
    """Polls pg_stat_activity: the most connections each tuning process (but this test's own) held
    at once, and the most all of them held together."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.per_process: collections.Counter = collections.Counter()
        self.total = 0
        self.polls = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.05):
                rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name "
                                    "LIKE %s GROUP BY application_name", (f"{APPLICATION_NAME} %",)).fetchall()
                for name, n in rows:
                    if name != f"{APPLICATION_NAME} {os.getpid()}":
                        self.per_process[name] = max(self.per_process[name], n)
                self.total = max(self.total, sum(n for _, n in rows))
                self.polls += 1


@contextlib.contextmanager
def watching(url):
    watch = ConnectionWatch(url)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        watch.join(timeout=10)


def test_two_workers_split_one_study(synth_data, tiny_weights, tmp_path, postgres_url, storage):
    common = ("--weights", str(tiny_weights), "--trials", "8", "--heartbeat", "2")
    with watching(postgres_url) as watch:
        procs = [worker(synth_data, tmp_path / f"machine{i}", postgres_url, "split", *common) for i in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    study, got = states(storage, "split")
    assert len(got) == 8 and set(got) <= {TrialState.COMPLETE, TrialState.PRUNED}
    runners = [t.user_attrs["worker"] for t in study.trials]
    assert len(set(runners)) == 2  # both processes worked on the study
    ran = [sorted(p.name for p in (tmp_path / f"machine{i}" / "tune-split" / "trials").iterdir()) for i in range(2)]
    assert not set(ran[0]) & set(ran[1]) and len(ran[0]) + len(ran[1]) == 8  # no trial ran twice
    assert study.best_trial.state == TrialState.COMPLETE
    assert study.best_trial.value == min(t.value for t in study.trials if t.state == TrialState.COMPLETE)
    # Each process (its trial loop, heartbeat and progress bar together) stayed within its pool.
    assert watch.polls > 10 and len(watch.per_process) == 2
    assert max(watch.per_process.values()) <= CONNECTIONS_PER_PROCESS


def run_all(command: list[str], count: int, *, timeout: float) -> list[tuple[str, str]]:
    """``count`` copies of ``command`` at once; each must exit 0 within ``timeout``: their outputs."""
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return outs


WORKER = textwrap.dedent("""
    import sys, threading, time
    import optuna
    from dogbreed.tune.study import open_storage, work

    url, name = sys.argv[1:3]
    storage = open_storage(url, 5)
    study = optuna.load_study(study_name=name, storage=storage)
    done = threading.Event()

    def watch():  # a third thread on the storage, as `dogbreed tune`'s progress bar is
        while not done.wait(0.02):
            study.get_trials(deepcopy=False)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(3):  # a trial that reports, as training does each epoch
            time.sleep(0.1)
            trial.report(x, step)
        return x

    ran = work(study, storage, objective, poll_s=0.2)
    done.set()
    watcher.join()
    print(ran)
""")


def test_32_workers_fit_in_a_default_postgresql(postgres_url, storage):
    """The storage layer of 32 tuning workers (no training: the connections are the point) against a
    server with PostgreSQL's default 100 connections: every trial runs once, no worker is refused."""
    study = optuna.create_study(study_name="fleet", storage=storage)
    for _ in range(64):
        study.enqueue_trial({})
    with watching(postgres_url) as watch:
        outs = run_all([sys.executable, "-c", WORKER, postgres_url, "fleet"], 32, timeout=240)
    fleet, got = states(storage, "fleet")
    assert sum(int(out.split()[-1]) for out, _ in outs) == len(got)  # each trial ran once, by one worker
    assert got.count(TrialState.COMPLETE) == 64 and set(got) <= {TrialState.COMPLETE, TrialState.FAIL}
    # A worker too starved to beat for 15 s has its trial failed and retried; never lost.
    retried = {t.system_attrs.get("failed_trial") for t in fleet.trials}
    assert all(t.number in retried for t in fleet.trials if t.state == TrialState.FAIL)
    assert len(watch.per_process) >= 16  # most workers were seen with their connections open
    assert max(watch.per_process.values()) <= CONNECTIONS_PER_PROCESS
    assert watch.total <= 33 * CONNECTIONS_PER_PROCESS  # the workers and this test's own storage


OPENER = textwrap.dedent("""
    import sys, time
    from dogbreed.tune.study import open_storage

    storage = open_storage(sys.argv[1], 5)
    time.sleep(3)  # holding what it opened, as a worker between trials does
    print(len(storage.get_all_studies()))
""")


def test_workers_opening_an_empty_database_together_stay_within_their_connections(postgres_url):
    """8 workers create the study's tables at once; those that lose the race retry, and the
    connections of the storage that failed are closed, not left open beside the new one's."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE empty_race")
    url = postgres_url.rsplit("/", 1)[0] + "/empty_race"
    with watching(url) as watch:
        outs = run_all([sys.executable, "-c", OPENER, url], 8, timeout=120)
    assert all(out.strip() == "0" for out, _ in outs)
    assert len(watch.per_process) == 8 and max(watch.per_process.values()) <= CONNECTIONS_PER_PROCESS


def test_a_killed_worker_leaves_the_study_consistent(synth_data, tmp_path, postgres_url, storage):
    # Trials on images (no embedding cache) last long enough to be killed in the middle of one.
    common = ("--trials", "5", "--heartbeat", "1", "--no-feature-cache", "--pruner", "none")
    survivor = worker(synth_data, tmp_path / "a", postgres_url, "kill", *common)
    victim = worker(synth_data, tmp_path / "b", postgres_url, "kill", *common)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                _, got = states(storage, "kill")
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
    study, got = states(storage, "kill")
    assert TrialState.RUNNING not in got and TrialState.WAITING not in got
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1  # the killed worker's trial, failed by the survivor's heartbeat check
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params.items() >= failed[0].params.items()  # it may die before suggesting all
    assert sum(s == TrialState.COMPLETE for s in got) == 5
