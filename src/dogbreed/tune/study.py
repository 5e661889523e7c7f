"""Optuna studies that any number of workers, on any machines, share through one storage.

Trials are planned up front: the process that creates a study enqueues ``trials`` empty trials;
every worker claims waiting trials one at a time (an atomic WAITING -> RUNNING update in the
database), so the study ends with exactly that many trials and none runs twice. Each running
trial records a heartbeat; a trial whose worker died is failed by the next worker that looks, and
retried once as a new trial with the same parameters.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

try:  # renamed in optuna 4.9
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryStale
except ImportError:  # pragma: no cover - older optuna
    from optuna.storages import RetryFailedTrialCallback as RetryStale

from dogbreed.errors import DogbreedError
from dogbreed.files import file_lock
from dogbreed.tune.options import OBJECTIVES

log = logging.getLogger(__name__)

SETUP_ATTR = "dogbreed_setup"  # written last by the creator: the study is ready to join
# Database connections one process holds at most: its trial loop and its heartbeat (or the progress
# bar) each need one now and then, and each use is short. SQLAlchemy's default pool would let one
# process open up to 15, so 32 workers could exhaust a default PostgreSQL's 100.
CONNECTIONS_PER_PROCESS = 2
APPLICATION_NAME = "dogbreed tune"  # with the pid: which process holds a connection, in pg_stat_activity

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats, retries and ask-style trials are stable in practice but flagged experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def masked(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, heartbeat: int = 10) -> RDBStorage:
    """An RDB storage with heartbeats; one clear line if it cannot be reached."""
    shown = masked(url)
    if url.startswith(("postgresql://", "postgres://")):  # the driver dogbreed installs: psycopg 3
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # a database server: a bounded pool (a thread waits up to 60 s for a connection, never opens more)
        engine_kwargs = {"pool_pre_ping": True, "pool_size": CONNECTIONS_PER_PROCESS, "max_overflow": 0,
                         "pool_timeout": 60}
        if url.startswith("postgresql+psycopg://"):
            engine_kwargs["connect_args"] = {"application_name": f"{APPLICATION_NAME} {os.getpid()}"}
    for attempt in range(5):
        if attempt:  # outside the except block, where the failed storage is no longer referenced
            gc.collect()  # the storage that lost a race: its engine, and the connections it opened
            time.sleep(0.2 + random.random())
        try:
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryStale(max_retry=1),
            )
        except ImportError as exc:
            missing = getattr(exc.__cause__, "name", None) or "database driver"
            raise DogbreedError(f"storage {shown} needs the {missing} package; install it with pip") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            # Workers starting together on an empty database race to create its tables: retry (SQLite
            # says so with an OperationalError: "table ... already exists").
            racing = isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or \
                "already exists" in reason
            if racing and attempt < 4:
                continue
            raise DogbreedError(f"cannot open storage {shown} ({reason})") from None
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if name in ("random", "grid"):  # a grid's points are planned as fixed trials: its sampler is never asked
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 3)))


def grid_points(grid: dict[str, list], seed: int) -> list[dict]:
    """Every combination of the grid's values, in a seeded random order (so that a study of fewer
    trials than points covers the grid evenly rather than its first corner)."""
    names = sorted(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    random.Random(seed).shuffle(points)
    return points


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":  # SageMaker's "Auto" early stopping: worse than the median at this epoch
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def create_or_load(storage: RDBStorage, name: str, *, setup: dict, trials: int, sampler, pruner,
                   points: list[dict] | None = None, wait_s: float = 30.0) -> tuple[optuna.Study, bool]:
    """The study ``name``: created with ``trials`` planned trials, or loaded if it exists with the
    same setup (search space and objective). Returns (study, created). With ``points`` (a grid),
    planned trial ``i`` runs ``points[i]``; without, the sampler chooses."""
    def plan(first: int, last: int) -> None:
        for i in range(first, last):
            study.enqueue_trial(points[i] if points else {})

    direction = OBJECTIVES[setup["objective"]]
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        deadline = time.monotonic() + wait_s
        while SETUP_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.2)  # its creator is still enqueueing the planned trials
        existing = study.user_attrs.get(SETUP_ATTR)
        if existing != setup:
            raise DogbreedError(
                f"study {name!r} exists with a different setup ({_differences(existing, setup)}); "
                f"use --study NEW_NAME to start fresh, or rerun with the original space and objective"
            )
        planned = study.user_attrs.get("planned_trials", 0)
        if trials > planned:  # asking for more trials extends the study
            plan(planned, trials)
            study.set_user_attr("planned_trials", trials)
        return study, False
    plan(0, trials)
    study.set_user_attr("planned_trials", trials)
    study.set_user_attr(SETUP_ATTR, setup)
    return study, True


def _differences(old: dict | None, new: dict) -> str:
    """``space: lr, epochs differ; objective: val_loss there, val_accuracy here``."""
    if old is None:
        return "it was not made by dogbreed tune"
    parts = []
    for key in ("space", "objective", "base"):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            parts.append(f"{key}: {', '.join(names)} differ")
        else:
            parts.append(f"{key}: {a} there, {b} here")
    return "; ".join(parts)


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while the block runs."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; a dead thread would fail the trial
                log.warning("could not record trial %d's heartbeat (%s); retrying", self.trial_id, exc)

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` storage URL (None for database servers)."""
    return Path(url.split(":///", 1)[1]) if url.startswith("sqlite:///") else None


def claim_lock(url: str) -> Path | None:
    """The file that serialises claims on a SQLite study (None for servers, which lock rows)."""
    db = sqlite_file(url)
    return db.with_name(db.name + ".claim.lock") if db else None


def claim(study: optuna.Study, storage: RDBStorage, lock: Path | None = None) -> int | None:
    """Atomically take one waiting trial of ``study`` (kept in ``storage``), WAITING -> RUNNING;
    returns its trial id, None if there is none left.

    The same row-level update ``Study.ask`` relies on, without its fallback of creating a new
    trial when none is waiting (which would run more trials than planned). PostgreSQL locks the
    row (SELECT ... FOR UPDATE); SQLite ignores that, and two processes took the same trial (14 of
    300 in a test), so on SQLite ``lock`` (``claim_lock``, a local file: SQLite workers share a
    machine) serialises the claims."""
    study_id = storage.get_study_id_from_name(study.study_name)
    with file_lock(lock) if lock else nullcontext():
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            # A trial object keeps its id private; the storage maps (study, number) to it.
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    # At once: a running trial with no heartbeat yet is never seen as stale, so a
                    # worker killed before its first beat would leave the others waiting forever.
                    storage.record_heartbeat(trial_id)
                    return trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


def work(study: optuna.Study, storage: RDBStorage, objective: Callable[[optuna.Trial], float], *,
         poll_s: float = 1.0, lock: Path | None = None,
         held: Callable[[], AbstractContextManager] = nullcontext) -> int:
    """Run trials until none is waiting or running anywhere; returns how many this worker ran.

    Interrupted (KeyboardInterrupt), the worker fails its running trial, as Optuna's own loop does,
    and plans it again for the next run of the command, then lets the interrupt go on. ``held``
    (``StopRequest.held``) keeps an interrupt out of claiming and telling: it comes after them, so a
    trial is never left running in the database by a worker that is gone."""
    ran = 0
    worker = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        trial_id = None
        try:
            with held():
                fail_stale_trials(study)  # a dead worker's trial becomes FAIL plus a waiting retry
                trial_id = claim(study, storage, lock)
                if trial_id is not None:
                    trial = optuna.Trial(study, trial_id)
                    trial.set_user_attr("worker", worker)
            if trial_id is None:
                if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    time.sleep(poll_s)  # others are busy; one may die and leave a retry to pick up
                    continue
                return ran
            ran += 1
            interval = storage.get_heartbeat_interval() or 10
            with Heartbeat(storage, trial_id, interval):
                try:
                    try:
                        value = objective(trial)
                    except optuna.TrialPruned:
                        with held():
                            study.tell(trial, state=TrialState.PRUNED)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        raise
                    except Exception as exc:
                        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        with held():
                            trial.set_user_attr("error", reason)
                            study.tell(trial, state=TrialState.FAIL)
                        log.warning("trial %d failed: %s", trial.number, reason, exc_info=log.isEnabledFor(logging.DEBUG))
                    else:
                        with held():
                            study.tell(trial, value)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Another worker saw no heartbeat from this one for 3 intervals (a stalled or
                    # overloaded machine) and failed the trial; its retry runs as a new trial.
                    log.warning("trial %d was failed by another worker while it ran (no heartbeat for %d s); "
                                "a retry of it runs instead", trial.number, 3 * interval)
        except KeyboardInterrupt:
            if trial_id is not None:
                _interrupted(study, storage, trial_id)
            raise


def _interrupted(study: optuna.Study, storage: RDBStorage, trial_id: int) -> None:
    """The interrupted trial FAIL, with a waiting copy of it (its parameters, and the grid point it
    was planned with) that the next run of the command claims; one told before the interrupt stays."""
    try:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    # The retry a dead worker's trial gets, with no limit: an interrupt is not the trial's fault.
    RetryStale(max_retry=None)(study, storage.get_trial(trial_id))
