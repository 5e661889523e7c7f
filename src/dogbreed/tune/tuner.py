"""``tune()``: an Optuna study over ``dogbreed.run.train``, its workers, and the final training.

Every trial is an ordinary training run stopped before its outputs; with a frozen backbone all
trials share the embedding cache, so after the first extraction a trial costs seconds. The best
trial's hyperparameters then get one full training that writes a normal run and artifact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from tqdm import tqdm

from dogbreed import machine, remote, tracking
from dogbreed.batches import EMBEDDING_KEYS, warm_cache
from dogbreed.checkpoints import RESUME_OVERRIDABLE, resume_config
from dogbreed.config import TrainConfig, coerce
from dogbreed.context import prepare
from dogbreed.data.layout import IMAGE_EXTS, scan
from dogbreed.distributed import ALONE, Ranks
from dogbreed.errors import DogbreedError
from dogbreed.files import make_folder, read_yaml
from dogbreed.lifetime import StopRequest, deaf_to_ctrl_c, end_with_parent
from dogbreed.logs import quiet, quieted, setup_logging
from dogbreed.run import LOCAL_OUT, RunResult, train
from dogbreed.tune import results
from dogbreed.tune.options import OBJECTIVES, TuneOptions
from dogbreed.tune.space import NOT_TUNABLE, Param, check_space, load_space, space_to_dict, suggest
from dogbreed.tune.study import (
    claim_lock,
    create_or_load,
    grid_points,
    make_pruner,
    make_sampler,
    masked,
    open_storage,
    work,
)

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
QUIET_DURING_TRIALS = ("dogbreed.run", "dogbreed.train", "dogbreed.features")
STOP_WAIT_S = 60  # how long interrupted workers get to fail their trials and end their loaders


@dataclass
class TuneResult:
    study_dir: Path
    best: dict | None
    rows: list[dict]
    final_run: Path | None
    artifact: Path | None


def default_storage(out: str, create: bool = True) -> str:
    if create:
        make_folder(out, "--out")
    return f"sqlite:///{Path(out).resolve() / 'tune.db'}"


def study_setup(base: TrainConfig, space: dict[str, Param], objective: str) -> dict:
    """What must match for two processes to share a study (paths and devices may differ)."""
    fixed = {k: v for k, v in base.to_dict().items() if k not in NOT_TUNABLE and k not in space}
    return {"objective": objective, "space": space_to_dict(space), "base": fixed}


def _components(opts: TuneOptions, space: dict[str, Param], base: TrainConfig, worker: int = 0):
    sampler = make_sampler(opts.sampler, opts.seed + worker, opts.trials)
    max_epochs = int(space["epochs"].high) if "epochs" in space and space["epochs"].high else base.epochs
    return sampler, make_pruner(opts.pruner, max_epochs)


def _objective(base: TrainConfig, space: dict[str, Param], objective: str, study_dir: Path, staged: remote.Staged):
    def run_trial(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        name = f"trial-{trial.number:03d}"
        cfg = dataclasses.replace(base, **params, out=str(study_dir / "trials"), name=name).validate()
        trial.set_user_attr("epochs_planned", cfg.epochs)

        def report(row: dict) -> None:
            trial.report(row[objective], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']}")

        # A trial's checkpoints are only needed while it runs.
        history = train(cfg, staged=staged, progress=False, on_epoch=report, finish=False, keep_checkpoints=False).history
        pick = min if OBJECTIVES[objective] == "minimize" else max
        best = pick(history, key=lambda r: r[objective])
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("best_epoch", best["epoch"])
        trial.set_user_attr("val_loss", best["val_loss"])
        trial.set_user_attr("val_accuracy", best["val_accuracy"])
        return best[objective]

    return run_trial


def _run_worker(storage: RDBStorage, url: str, opts: TuneOptions, base: TrainConfig, space: dict[str, Param],
                study_dir: Path, staged: remote.Staged, worker: int, held=nullcontext) -> int:
    sampler, pruner = _components(opts, space, base, worker)
    study = optuna.load_study(study_name=opts.study, storage=storage, sampler=sampler, pruner=pruner)
    return work(study, storage, _objective(base, space, opts.objective, study_dir, staged), poll_s=min(1.0, opts.heartbeat),
                lock=claim_lock(url), held=held)


def _worker_process(parent, url, opts, base, space, study_dir, staged, worker, threads) -> None:
    """Entry of a ``--parallel`` worker process (spawned: a fresh interpreter, no inherited threads).
    SIGTERM, what ``tune`` sends its workers when interrupted, stops it in order: its running trial
    fails and is planned again, its loaders' workers end. The death of ``tune`` kills it outright
    (nobody is left to wait for it; its running trial is retried by the next run)."""
    import torch

    end_with_parent(parent, signal.SIGKILL)
    machine.keep_freed_memory()  # a fresh interpreter: the parent's allocator setting is not inherited
    os.environ["TQDM_DISABLE"] = "1"
    setup_logging()
    quiet(QUIET_DURING_TRIALS)
    torch.set_num_threads(threads)
    with StopRequest(signal.SIGTERM) as stop:
        try:
            _run_worker(open_storage(url, opts.heartbeat), url, opts, base, space, study_dir, staged, worker,
                        held=stop.held)
        except KeyboardInterrupt:
            raise SystemExit(130) from None  # stopped as asked: no traceback


class _Progress(threading.Thread):
    """Prints one line per finished trial and a bar over trials, by polling the shared storage."""

    def __init__(self, study: optuna.Study, objective: str, enabled: bool, finished_before: set[int]):
        super().__init__(daemon=True)
        self.study, self.objective = study, objective
        self.seen = set(finished_before)  # an earlier run's trials: `tune show` lists them
        self.stop = threading.Event()
        total = len(study.get_trials(deepcopy=False))
        self.bar = tqdm(total=total, initial=len(self.seen), desc="trials", unit="trial", disable=not enabled)

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        self.bar.total = len(trials)
        params = sorted({p for t in trials for p in t.params})
        for t in trials:
            if t.state in FINISHED and t.number not in self.seen:
                self.seen.add(t.number)
                self.bar.update(1)
                tqdm.write(results.format_trial(results.trial_row(t, params), self.objective))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()

    def close(self) -> None:
        self.stop.set()
        if self.ident is not None:  # started (a torchrun rank but 0 never starts it)
            self.join()
            self.poll()
        self.bar.close()


def tune(base: TrainConfig, opts: TuneOptions, *, ranks: Ranks = ALONE, progress: bool = True) -> TuneResult:
    """Run (or join) the study and, when no trial is left anywhere, write its results and train the
    best parameters once more. Under torchrun every rank is a tuning worker of the same study (with
    its own --parallel processes), and rank 0 alone writes the results and the final run
    (``ranks``: this worker's place, from ``distributed.session(join=False)``: no process group)."""
    opts.validate()
    rank = ranks.rank
    if ranks.world > 1 and not opts.storage and ranks.local_world != ranks.world:
        raise DogbreedError("under torchrun on several machines the ranks share one study through --storage "
                            "postgresql://...; the default SQLite file is one machine's")
    space = load_space(opts.space)
    points = None
    if opts.sampler == "grid":
        if any(p.type == "float" and p.step is None for p in space.values()):
            log.info("grid sampler: float ranges are sampled at 3 points each (give a step for another grid)")
        points = grid_points({name: p.grid() for name, p in space.items()}, opts.seed)
        if opts.trials > len(points):
            log.info("grid sampler: the grid has %d points, so %d trials instead of %d", len(points), len(points), opts.trials)
            opts = dataclasses.replace(opts, trials=len(points))
    if ranks.rank == 0:  # a missing MLflow, where the study is to be tracked, fails before any trial
        tracking.Tracker.optional(tracking.tracking_uri(base.tracking_uri, base.track,
                                                        LOCAL_OUT if remote.is_s3(base.out) else base.out))
    staged = remote.staged(base.data, IMAGE_EXTS, progress=progress)  # staged once, for every trial here
    scan(staged.root)  # a missing or misshapen data set is said before any study is made
    check_space(space, base, opts.space)
    out = base.out
    if remote.is_s3(out):  # the study runs locally; its final artifact is uploaded
        remote.check_writable(out)
        out = LOCAL_OUT
    study_dir = Path(out) / f"tune-{opts.study}"
    url = opts.storage or default_storage(out)
    storage = open_storage(url, opts.heartbeat)
    sampler, pruner = _components(opts, space, base)
    study, created = create_or_load(storage, opts.study, setup=study_setup(base, space, opts.objective),
                                    trials=opts.trials, sampler=sampler, pruner=pruner, points=points)
    finished = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    done = len(finished)
    finished = _finished_before_the_job(ranks, finished)  # before any trial of this job ran
    log.info("study %s %s in %s: %d trial(s) planned, %d finished; %d local worker(s); objective %s (%s)",
             opts.study, "created" if created else "joined", masked(url), study.user_attrs["planned_trials"], done,
             opts.parallel, opts.objective, OBJECTIVES[opts.objective])

    if base.uses_feature_cache and not EMBEDDING_KEYS & set(space) and study.get_trials(
            deepcopy=False, states=(TrialState.WAITING,)):
        # Every trial shares these embeddings: compute them once here, with all cores, not in a worker.
        stats = warm_cache(prepare(base, staged=staged), progress=progress)
        log.info("embeddings ready: %d cached, %d computed", stats["hits"], stats["computed"])
    bar = _Progress(study, opts.objective, progress and rank == 0, finished)
    if rank == 0:  # the other ranks' trials show in rank 0's lines too: they share the study
        bar.start()
    first = rank * opts.parallel  # each worker anywhere samples with a seed of its own
    try:
        if opts.parallel == 1:
            with quieted(QUIET_DURING_TRIALS), StopRequest(signal.SIGINT) as stop:  # Ctrl-C fails the trial in order
                _run_worker(storage, url, opts, base, space, study_dir, staged, first, held=stop.held)  # its one storage
        else:
            _run_processes(url, opts, base, space, study_dir, staged, first, threads=max(1, ranks.local_cpus() // opts.parallel))
    finally:
        bar.close()
    if rank > 0:  # every trial has ended (a worker returns only then): rank 0 writes what they found
        log.info("rank %d: no trial left in study %s; rank 0 writes the results and the final run", rank, opts.study)
        return TuneResult(study_dir, None, [], None, None)
    return finish(study, opts, base, url, study_dir, progress=progress)


def _finished_before_the_job(ranks: Ranks, mine: set[int]) -> set[int]:
    """The trials that were finished before any rank of this job ran one: those every rank found
    finished when it joined the study. Rank 0 prints every trial's line, the other ranks' too, and
    under torchrun another rank may finish trials before rank 0 first looks (it started later, or
    took longer to load the embeddings): what rank 0 found alone would leave those without a line."""
    try:
        looks = ranks.collect("finished trials", sorted(mine))
    except DogbreedError as exc:
        log.warning("%s: trials the other ranks finish before rank 0 looks may have no line", exc)
        return mine
    return mine if looks is None else mine.intersection(*map(set, looks))


def _run_processes(url, opts, base, space, study_dir, staged, first: int, *, threads: int) -> None:
    """``--parallel`` worker processes, each of ``threads`` threads (under torchrun: this rank's part
    of the cores, shared)."""
    ctx = multiprocessing.get_context("spawn")
    # Not daemonic: a trial on images starts DataLoader worker processes of its own.
    procs = [ctx.Process(target=_worker_process, args=(os.getpid(), url, opts, base, space, study_dir, staged, first + i,
                                                                threads))
             for i in range(opts.parallel)]
    with deaf_to_ctrl_c():  # a Ctrl-C interrupts this process alone, which then stops them in order
        for p in procs:
            p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        log.info("interrupted: stopping the workers; their running trials fail and are retried by the next run")
        for p in procs:
            p.terminate()  # SIGTERM: each worker's StopRequest
        deadline = time.monotonic() + STOP_WAIT_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        log.warning("%d worker process(es) exited with an error (codes %s)", len(failed), failed)


def finish(study: optuna.Study, opts: TuneOptions, base: TrainConfig, url: str, study_dir: Path, *,
           progress: bool = True) -> TuneResult:
    """Table, plots, the final training with the best hyperparameters, and best.json."""
    study_dir.mkdir(parents=True, exist_ok=True)
    rows = results.table(study)
    results.write_table(rows, study_dir / "trials.csv")
    plots = results.write_plots(study, study_dir / "plots")
    best = results.best_summary(study)
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    doc = {"study": opts.study, "storage": masked(url), "objective": opts.objective,
           "direction": OBJECTIVES[opts.objective], "trials": counts, "pruning": results.pruning_savings(study),
           "best_trial": best, "plots": plots}
    uri = tracking.tracking_uri(base.tracking_uri, base.track, str(study_dir.parent))
    # a study tuned again (more trials, say) adds to the parent run it logged before, not a second one
    logged = _earlier(study_dir / "best.json").get("mlflow") or {}
    again = logged.get("run_id") if uri and logged.get("uri") == tracking.public(uri) else None
    tracker = tracking.open_run(uri, study_dir.name, {"study": opts.study, "objective": opts.objective},
                                run_id=again) if uri else None
    if tracker:
        doc["mlflow"] = {"uri": tracking.public(uri), "run_id": None, "trials": tracking.log_study(
            tracker, study, opts.objective, base, done=set(logged.get("trials", [])) if again else None)}
    try:
        final_run, artifact = _final(study_dir, base, opts, best, doc, tracker, progress)
    except BaseException as exc:
        if tracker:
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if tracker:
        doc["mlflow"]["run_id"] = tracker.started()
    results.write_best(study_dir / "best.json", doc)
    log.info("results: %s (best.json, trials.csv, plots/)", study_dir)
    if tracker:
        tracking.log_study_files(tracker, study_dir, doc)
        tracker.close()
        if tracker.failed:  # what was not logged is logged again next time
            doc.pop("mlflow")
            results.write_best(study_dir / "best.json", doc)
    if best is None:
        errors = [t.user_attrs["error"] for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if "error" in t.user_attrs]
        why = f"; the first error: {errors[0]}" if errors else ""
        raise DogbreedError(f"no trial completed ({counts['FAIL']} failed, {counts['PRUNED']} pruned){why}; "
                            f"see {study_dir / 'trials.csv'}")
    return TuneResult(study_dir, best, rows, final_run, artifact)


def _final(study_dir: Path, base: TrainConfig, opts: TuneOptions, best: dict | None, doc: dict, tracker,
           progress: bool) -> tuple[Path | None, Path | None]:
    """The final training with the best trial's parameters (nested under the study's MLflow run
    where it is tracked), or the one an earlier ``tune`` made of the same trial: (run, artifact)."""
    final_run = artifact = None
    if best is not None:
        log.info("best trial %d: %s %.4f with %s", best["number"], opts.objective, best["value"],
                 results.format_params(best["params"]))
        earlier = _earlier_final(study_dir / "best.json", best)
        if opts.final and earlier:
            log.info("final training already done for trial %d: %s", best["number"], earlier["artifact"])
            final_run, artifact = Path(earlier["run_dir"]), Path(earlier["artifact"])
            doc["final_run"] = earlier
        elif opts.final:
            cfg = dataclasses.replace(base, **best["params"], out=str(study_dir), name="best").validate()
            parent = tracker.started() if tracker else None
            run = _final_run(cfg, best["params"], study_dir / "best", progress=progress,
                             tags={"mlflow.parentRunId": parent, "trial": "final"} if parent else None)
            final_run, artifact = run.run_dir, run.artifact
            doc["final_run"] = {"run_dir": str(run.run_dir), "artifact": str(run.artifact), "trial": best["number"], **run.test}
            if remote.is_s3(base.out):
                doc["final_run"]["uploaded"] = remote.upload_run(run.run_dir, base.out, name=study_dir.name + "/best")
    return final_run, artifact


def _final_run(cfg: TrainConfig, params: dict, folder: Path, *, progress: bool, tags: dict | None = None) -> RunResult:
    """The best hyperparameters trained into ``tune-<study>/best``: a final run of these same
    parameters that was killed (a checkpoint and no artifact) resumes; one that finished is kept;
    one of an earlier best trial is replaced. The artifact stays at the documented path."""
    if folder.is_dir() and _trained_with(folder, params):
        if (folder / "model.tar.gz").is_file() and (folder / "results.json").is_file():
            log.info("final training already done in %s", folder)
            done = json.loads((folder / "results.json").read_text(encoding="utf-8"))
            return RunResult(folder, folder / "model.tar.gz", {k: v for k, v in done.items() if k.startswith("test_")},
                             done.get("best_epoch", 0), [])
        log.info("resuming the final training in %s (it was interrupted)", folder)
        overrides = {k: v for k, v in cfg.to_dict().items() if k in RESUME_OVERRIDABLE and k != "epochs"}
        return train(resume_config(folder, overrides), resume=folder, progress=progress, tags=tags)
    if folder.exists():
        log.info("replacing %s: it holds the final run of other hyperparameters", folder)
        shutil.rmtree(folder)
    log.info("final training with the best hyperparameters")
    return train(cfg, progress=progress, tags=tags)


def _trained_with(folder: Path, params: dict) -> bool:
    """The run in ``folder`` was configured with these values of the searched parameters."""
    try:
        saved = read_yaml(folder / "config.yaml", "config file") or {}
    except DogbreedError:
        return False
    return all(k in saved and coerce(k, saved[k]) == v for k, v in params.items())


def _earlier(best_json: Path) -> dict:
    """What an earlier ``tune`` of this study wrote in best.json (nothing where there is none)."""
    try:
        found = json.loads(best_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _earlier_final(best_json: Path, best: dict) -> dict | None:
    """The final run an earlier ``tune`` of this study made, if it trained this same best trial and
    its artifact is still there: rerunning a finished study does not train it again."""
    final = _earlier(best_json).get("final_run") or {}
    return final if final.get("trial") == best["number"] and Path(final.get("artifact", "")).is_file() else None
