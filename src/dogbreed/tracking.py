"""Every run on record: a training as an MLflow run (its config as params, each epoch's metrics as
steps, the test figures, the rules' outcomes as tags, its files as artifacts), in any MLflow
tracking store: a server (``--tracking-uri http://...`` or ``$MLFLOW_TRACKING_URI``) or a local
SQLite file (``--track``: ``sqlite:///<out>/mlflow.db``, artifacts beside it).

Tracking must never cost a run: calls go to one background thread through a queue, so a slow
server never stalls an epoch; the first failure (a server down, refusing, or slow past its
timeout) is one warning, after which nothing more is sent; the run goes on, and its end says
what was not logged (the run's folder has all of it). MLflow's own client does the talking
(``MlflowClient``: no global "active run", so a process can hold several); what is written here
is only that discipline and what to log. ``pip install 'dogbreed[mlflow]'``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dogbreed.errors import DogbreedError

log = logging.getLogger(__name__)
EXPERIMENT = "dogbreed"
LOCAL_STORE = "mlflow.db"  # under --out, with --track
RUN_FILE = "mlflow_run.json"  # in a tracked run's folder: its MLflow run, which --resume goes on in
CLOSE_WAIT_S = 120.0  # the most a run's end waits for its uploads (a failing store ends the wait at once)
# MLflow's client retries a request 7 times with growing pauses, for minutes: here a request gets a
# short timeout and one retry, unless the environment says otherwise; and the run's link is said in
# the run's log, not printed to stdout, which some commands keep for JSON
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
RUN_FILES = ("results.json", "interpretation.json", "metrics.csv", "config.yaml", "labels.json", "per_class.csv",
             "curves.png", "confusion.png", "reliability.png", "per_class.png", "top_losses.png",
             "confused_pairs.png", "model.tar.gz")


def tracking_uri(uri: str | None, track: bool, out: str) -> str | None:
    """Where runs are logged: ``uri`` as given, else ``--track``'s local store under ``out``, else
    ``$MLFLOW_TRACKING_URI``, else None (off)."""
    if uri:
        return uri
    if track:
        return f"sqlite:///{Path(out).resolve() / LOCAL_STORE}"
    return os.environ.get("MLFLOW_TRACKING_URI") or None


MISSING = ("tracking runs needs MLflow: pip install 'dogbreed[mlflow]' (or drop --tracking-uri, --track and "
           "$MLFLOW_TRACKING_URI)")


def _entities():
    import mlflow.entities

    return mlflow.entities


def mlflow_installed() -> bool:
    """Found, not imported (importing MLflow takes a second)."""
    return importlib.util.find_spec("mlflow") is not None


def client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise DogbreedError(MISSING) from None
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "alembic"):  # their set-up chatter ("Creating initial MLflow database tables...")
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "Retrying ...": the failure is said once
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """One MLflow run, fed from a background thread. Every method returns at once."""

    @staticmethod
    def optional(uri: str | None) -> Callable[[str, dict], "Tracker"] | None:
        """None where tracking is off; else a maker of runs in ``uri``'s store. A missing MLflow
        fails now, before any work (found, not imported: the import, a second, happens on the
        background thread while the run starts)."""
        if uri is None:
            return None
        if not mlflow_installed():
            raise DogbreedError(MISSING)
        return lambda name, tags, **more: open_run(uri, name, tags, **more)

    def __init__(self, uri: str, name: str, *, experiment: str = EXPERIMENT, tags: dict | None = None,
                 artifact_root: str | None = None, run_id: str | None = None, ends: bool = False,
                 on_start: Callable[[str], None] | None = None):
        """``run_id``: log to that existing run (a training's, which ``evaluate`` adds to) rather than a
        new one; its end is then left as it was, unless ``ends`` (a resumed training, a study tuned
        again: the run goes on)."""
        self.uri, self.name = uri, name
        self.attached = run_id
        self.ends = ends or not run_id
        self._on_start = on_start  # called with the run's id once it exists (on the background thread)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.failed: str | None = None  # what failed first, once something did
        self.warned = False  # the failure was said (a wait that ran out is said at the end alone)
        self.dropped: Counter = Counter()
        self._started = threading.Event()  # set once the run exists, or its creation failed
        self._queue: queue.Queue = queue.Queue()
        self._client = None  # made on the background thread: importing MLflow takes a second
        self._thread = threading.Thread(target=self._work, name="dogbreed-tracking", daemon=True)
        self._thread.start()
        self._send("start", lambda: self._start(experiment, tags or {}, artifact_root))

    # --- what a run logs -------------------------------------------------------------------------

    # (MLflow's entities are made on the background thread too, where MLflow is imported)

    def params(self, params: dict) -> None:
        items = [(k, _text(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            chunk = items[start:start + 100]
            self._send("params", lambda chunk=chunk: self._client.log_batch(
                self.run_id, params=[_entities().Param(k, v) for k, v in chunk]), len(chunk))

    def metrics(self, values: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [(k, float(v)) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self._send("metrics", lambda: self._client.log_batch(
                self.run_id, metrics=[_entities().Metric(k, v, now, step or 0) for k, v in items]), len(items))

    def tags(self, tags: dict) -> None:
        items = [(k, _text(v)) for k, v in tags.items()]
        if items:
            self._send("tags", lambda: self._client.log_batch(
                self.run_id, tags=[_entities().RunTag(k, v) for k, v in items]), len(items))

    def file(self, path: Path, folder: str | None = None) -> None:
        self._send("files", lambda: self._client.log_artifact(self.run_id, str(path), folder))

    def child(self, name: str, params: dict, steps: dict[str, list[tuple[int, float]]], metrics: dict, tags: dict,
              status: str = "FINISHED") -> None:
        """A finished run nested under this one (MLflow's ``mlflow.parentRunId`` tag): a tuning
        trial, say, with its ``params``, each metric's history as (step, value), its final
        ``metrics`` and ``tags``."""
        def log() -> None:
            Metric, Param = _entities().Metric, _entities().Param
            now = int(time.time() * 1000)
            run_id = self._client.create_run(self.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.run_id, **{k: _text(v) for k, v in tags.items()}}).info.run_id
            history = [Metric(k, float(v), now, step) for k, values in steps.items() for step, v in values]
            final = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
            items = history + final
            for start in range(0, max(len(items), 1), 1000):  # MLflow takes at most 1000 metrics a batch
                self._client.log_batch(run_id, metrics=items[start:start + 1000],
                                       params=[Param(k, _text(v)) for k, v in sorted(params.items())] if not start else [])
            self._client.set_terminated(run_id, status)

        self._send("nested runs", log)

    def started(self, timeout: float = 30.0) -> str | None:
        """This run's id once it exists (waiting at most ``timeout``), or None where its creation
        failed or is still waiting on the store."""
        self._started.wait(timeout)
        return self.run_id

    def reference(self) -> dict | None:
        """Where this run lies, ``{"uri", "run_id"}``, for the artifact to carry; None where the
        store never made it."""
        run_id = self.started()
        return {"uri": public(self.uri), "run_id": run_id} if run_id else None

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``) and wait, at most
        :data:`CLOSE_WAIT_S`, for what is queued; then say, in one line, what was not logged."""
        if self.ends:
            self._send("the run's end", lambda: self._client.set_terminated(self.run_id, status))
        self._queue.put(None)
        self._thread.join(CLOSE_WAIT_S)
        if self._thread.is_alive():
            self.failed = self.failed or f"still sending after {CLOSE_WAIT_S:.0f} s"
            self.dropped["items still queued"] += max(self._queue.qsize() - 1, 0)  # less the end marker
        if self.failed:
            what = ", ".join(kind if kind == "the run's end" else f"{n} {kind}" for kind, n in sorted(self.dropped.items()))
            log.warning("MLflow: not logged to %s (%s): %s; the run's folder has everything", public(self.uri),
                        "after the failure above" if self.warned else self.failed, what or "nothing lost")
        elif self.run_id:
            shown = public(self.uri)
            where = (f"{shown.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
                     if shown.startswith(("http://", "https://")) else f"run {self.run_id} in {shown}")
            log.info("MLflow: %s", where)

    # --- the background thread --------------------------------------------------------------------

    def _send(self, kind: str, call: Callable[[], object], count: int = 1) -> None:
        self._queue.put((kind, call, count))

    def _work(self) -> None:
        try:
            self._drain()
        finally:
            self._started.set()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, call, count = item
            if self.failed:
                self.dropped[kind] += count
                continue
            try:
                call()
            except Exception as exc:  # noqa: BLE001 (any failure of the store: the run goes on without it)
                self.failed = f"sending {kind}: {reason(exc)}"
                self.dropped[kind] += count
                log.warning("MLflow tracking at %s failed (%s); the run goes on without it", public(self.uri),
                            self.failed)
                self.warned = True
            finally:
                if kind == "start":
                    self._started.set()

    def _start(self, experiment: str, tags: dict, artifact_root: str | None) -> None:
        self._client = client(self.uri)
        if self.attached:
            self.experiment_id = self._client.get_run(self.attached).info.experiment_id  # it exists, or this fails
            self.run_id = self.attached
            if self.ends:  # it goes on
                self._client.update_run(self.attached, status="RUNNING")
            return
        self.experiment_id = experiment_id(self._client, experiment, artifact_root)
        self.run_id = self._client.create_run(self.experiment_id, run_name=self.name,
                                              tags={k: _text(v) for k, v in tags.items()}).info.run_id
        if self._on_start:
            self._on_start(self.run_id)


def experiment_id(store, name: str = EXPERIMENT, artifact_root: str | None = None) -> str:
    """The id of the experiment ``name`` in ``store`` (an ``MlflowClient``), made where missing."""
    found = store.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return store.create_experiment(name, artifact_location=artifact_root)
    except Exception:  # another process made it first
        found = store.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def artifact_root(uri: str) -> str | None:
    """Where a local SQLite store keeps its runs' files: ``mlartifacts/`` beside it (MLflow's
    default would be ``./mlruns`` in whatever folder the command ran in)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def public(uri: str) -> str:
    """``uri`` with its password, if it holds one, as ``***``: what logs and files that travel (an
    artifact's model.json) may show, and what runs are matched on."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.password:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def reason(exc: Exception) -> str:
    """An exception of the store in a few words: MLflow wraps a refused connection or a timeout in
    a paragraph of urllib3's."""
    text = str(exc)
    for marker, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host")):
        if marker in text:
            return said
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:160]}"


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def open_run(uri: str, name: str, tags: dict | None = None, run_id: str | None = None,
             remember: Path | None = None) -> Tracker:
    """A :class:`Tracker` for a run named ``name`` (or the existing run ``run_id``, which it ends
    again). A local SQLite store keeps its artifacts beside it (``mlartifacts/``). ``remember``: a
    run folder where the run's id is kept (:data:`RUN_FILE`), so that ``--resume`` goes on in it."""
    return Tracker(uri, name, tags=tags, artifact_root=artifact_root(uri), run_id=run_id, ends=True,
                   on_start=(lambda run_id: _remember(remember, uri, run_id)) if remember else None)


def earlier_run(run_dir: Path, uri: str) -> str | None:
    """The MLflow run a training in ``run_dir`` logged to in this store before (``--resume``)."""
    try:
        found = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found.get("run_id") if isinstance(found, dict) and found.get("uri") == public(uri) else None


def _remember(run_dir: Path, uri: str, run_id: str) -> None:
    from dogbreed.files import atomic_write_text

    atomic_write_text(run_dir / RUN_FILE, json.dumps({"uri": public(uri), "run_id": run_id}))


def log_to_model_run(uri: str, meta: dict, model_name: str, kind: str, metrics: dict, files: list[Path],
                     folder: str, *, step: int | None = None, run_id: str | None = None) -> None:
    """What judged a model after its training (``evaluate``, ``monitor run``: ``kind``), in that
    model's run where the artifact names one in this store (model.json's ``tracking``; ``run_id``
    where the caller knows better), else in a run of its own: ``metrics`` (at ``step``) and
    ``files`` under ``folder``."""
    tracked = meta.get("tracking") or {}
    run_id = run_id or (tracked.get("run_id") if tracked.get("uri") == public(uri) else None)
    tracker = Tracker(uri, f"{kind} {Path(model_name).name}", tags={"judged_model": model_name},
                      artifact_root=artifact_root(uri), run_id=run_id)
    tracker.metrics({k: v for k, v in metrics.items() if v is not None}, step=step)
    for path in files:
        tracker.file(path, folder)
    tracker.close()


def also(on_epoch: Callable[[dict], None] | None, tracker: Tracker | None) -> Callable[[dict], None] | None:
    """``on_epoch`` (or nothing) and then each epoch's metrics to ``tracker``, as step ``epoch``."""
    if tracker is None:
        return on_epoch

    def both(row: dict) -> None:
        if on_epoch is not None:
            on_epoch(row)
        tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    return both


def log_finished_run(tracker: Tracker, run_dir: Path) -> None:
    """A finished run's figures (results.json's test metrics, calibration, rejection and focus),
    the rules' outcomes (tags) and its files: :data:`RUN_FILES` and the profile report."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    figures = {k: results[k] for k in ("test_loss", "test_accuracy", "test_top5", "best_val_loss", "seconds")
               if isinstance(results.get(k), (int, float))}
    for section, keys in (("calibration", ("temperature", "test_nll_before", "test_nll_after", "test_ece_before",
                                           "test_ece_after")),
                          ("rejection", ("threshold", "test_kept")),
                          ("saliency_focus", ("mean", "lift"))):
        found = results.get(section) or {}
        figures.update({f"{section}.{k}": found[k] for k in keys if isinstance(found.get(k), (int, float))})
    tracker.metrics(figures)
    tracker.tags({"best_epoch": results.get("best_epoch"), "weights": results.get("weights")})
    outcomes = {}
    for path in sorted((run_dir / "profile" / "rules").glob("*.json")):  # the rules' outcomes, as tags
        try:
            rule = json.loads(path.read_text())
            outcomes[f"rule.{rule['rule']}"] = str(rule["status"]).split(":")[0]  # triggered, no issues found, ...
        except (OSError, ValueError, KeyError, TypeError):
            continue
    tracker.tags(outcomes)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            tracker.file(run_dir / name)
    for name in ("report.html",):
        if (run_dir / "profile" / name).is_file():
            tracker.file(run_dir / "profile" / name, "profile")


def log_study(tracker: Tracker, study, objective: str, base, done: set[int] | None = None) -> list[int]:
    """A tuning study as the parent run: the base config as params, and each trial as a nested run
    with its sampled params, its ``objective`` epoch by epoch (what the pruner saw), its
    ``value`` (what Optuna ranks it by) and its state (a pruned trial is tagged ``state: PRUNED``). Written from Optuna's storage
    once the study ends, so the trials' worker processes never talk to MLflow. ``done``: the trials
    an earlier ``tune`` logged to this parent run, not logged again. Returns the trials logged, all told."""
    from optuna.trial import TrialState

    if done is None:
        tracker.params({**base.to_dict(), "objective": objective})
    logged = sorted(done or ())
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or trial.number in (done or ()):
            continue
        logged.append(trial.number)
        metrics = {"value": trial.value} if trial.value is not None else {}  # as Optuna ranks the trial
        tracker.child(f"trial {trial.number}", trial.params, {objective: sorted(trial.intermediate_values.items())},
                      metrics, {"trial": trial.number, "state": trial.state.name},
                      "FAILED" if trial.state == TrialState.FAIL else "FINISHED")
    return sorted(logged)


def log_study_files(tracker: Tracker, study_dir: Path, doc: dict) -> None:
    """The study's outcome on its parent run: the best trial (tags and its value), best.json,
    trials.csv and the plots (the parameters' importances among them)."""
    best = doc.get("best_trial") or {}
    if best:
        tracker.tags({"best_trial": best.get("number"), **{f"best.{k}": v for k, v in best.get("params", {}).items()}})
        tracker.metrics({f"best_{doc['objective']}": best.get("value")})
    tracker.metrics({f"trials_{state.lower()}": n for state, n in doc.get("trials", {}).items()})
    for name in ("best.json", "trials.csv"):
        if (study_dir / name).is_file():
            tracker.file(study_dir / name)
    for plot in sorted((study_dir / "plots").glob("*")):
        if plot.is_file():
            tracker.file(plot, "plots")
