"""Models by name: ``dogbreed register`` adds an artifact to MLflow's model registry as a new
version of a named model, and moves aliases (``champion``); every command that reads a model
(serve, predict, transform, export, evaluate, explain) takes ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` where it takes a file.

A version is the artifact as it is (``model.tar.gz``, byte for byte) inside an MLflow model of the
``python_function`` flavor (``pyfunc_model.py``), with its model card as the version's
description and, as tags, what judging it needs: its test accuracy and ECE and the digest of the
test split they were measured on. ``--promote`` moves the alias only when the candidate is no
worse than the alias's holder on both, on the same test set: the recorded figures where the two
digests agree, else both models judged again on ``--data``'s test split.

MLflow's registry does the storing, the versioning and the aliases; written here is only what a
dogbreed version carries and the promotion rule.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from dogbreed import remote, tracking
from dogbreed.errors import DogbreedError
from dogbreed.files import default_cache_dir, file_lock

log = logging.getLogger(__name__)
SCHEME = "models:/"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
ARTIFACT = "model.tar.gz"
MODEL_PATH = "model"  # the MLflow model's name within its run, and its files: artifacts/model.tar.gz
DESCRIPTION_LIMIT = 5000  # characters of the model card kept as the version's description
DEFAULT_STORE = Path("runs") / tracking.LOCAL_STORE  # `train --track`'s store, with the default --out


def is_model_uri(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def store(uri: str | None = None, track: bool = False, out: str = "runs") -> str:
    """The registry's store: ``--tracking-uri``, else ``--track``'s (``OUT/mlflow.db``), else
    ``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db`` where it exists."""
    found = tracking.tracking_uri(uri, track, out)
    if found:
        return found
    if DEFAULT_STORE.is_file():
        return f"sqlite:///{DEFAULT_STORE.resolve()}"
    raise DogbreedError("no model registry: pass --tracking-uri URI (or --track for runs/mlflow.db), or set "
                        "MLFLOW_TRACKING_URI to the MLflow store that holds the models")


def _client(uri: str):
    if not tracking.mlflow_installed():
        raise DogbreedError(tracking.MISSING.replace("tracking runs", "the model registry"))
    return tracking.client(uri)


@dataclass
class Figures:
    """What promotion weighs: test accuracy and ECE, on the test split of this digest."""

    accuracy: float | None
    ece: float | None
    digest: str | None

    @staticmethod
    def of_meta(meta: dict) -> Figures:
        metrics = meta.get("metrics") or {}
        return Figures(metrics.get("test_accuracy"), metrics.get("test_ece"), (meta.get("data_digest") or {}).get("test"))

    @staticmethod
    def of_tags(tags: dict) -> Figures:
        number = lambda key: float(tags[key]) if key in tags else None  # noqa: E731
        return Figures(number("test_accuracy"), number("test_ece"), tags.get("data_digest"))

    def complete(self) -> bool:
        return None not in (self.accuracy, self.ece)

    def tags(self) -> dict:
        found = {"test_accuracy": self.accuracy, "test_ece": self.ece, "data_digest": self.digest}
        return {k: str(v) for k, v in found.items() if v is not None}

    def said(self) -> str:
        return f"accuracy {100 * self.accuracy:.2f}%, ECE {100 * self.ece:.2f}%"


# --- models:/ URIs ---------------------------------------------------------------------------------

def model_file(path: str | os.PathLike, *, progress: bool = False) -> Path:
    """A model named as a command takes it, ready to load: a local artifact (or folder) as it is, an
    ``s3://`` object staged (``remote.staged_file``), a ``models:/`` URI fetched (:func:`fetch`)."""
    return fetch(path) if is_model_uri(path) else remote.staged_file(path, progress=progress)


def fetch(uri: str) -> Path:
    """The ``model.tar.gz`` of ``models:/NAME@ALIAS`` (or ``/VERSION``), downloaded once per version
    into the cache (``$DOGBREED_CACHE/mlflow-models``) and reused after."""
    name, ref = _parse(uri)
    where = store()
    client = _client(where)
    version = _version(client, name, ref, uri, where)
    folder = default_cache_dir() / "mlflow-models" / _slug(where) / name / str(version.version)
    tar = folder / "artifacts" / ARTIFACT
    with file_lock(folder.parent / f"{version.version}.lock"):
        if not tar.is_file():
            log.info("fetching %s (version %s of %s) from %s", uri, version.version, name, tracking.public(where))
            import mlflow.artifacts

            with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetching-") as tmp:
                into = Path(tmp) / "version"  # moved into place once whole
                into.mkdir()
                try:
                    got = mlflow.artifacts.download_artifacts(f"{SCHEME}{name}/{version.version}", dst_path=str(into),
                                                              tracking_uri=where, registry_uri=where)
                except Exception as exc:  # noqa: BLE001 (a store's failure, in one line)
                    raise DogbreedError(f"cannot fetch {uri} from {tracking.public(where)}: {tracking.reason(exc)}") from None
                if not (Path(got) / "artifacts" / ARTIFACT).is_file():
                    raise DogbreedError(f"{uri} (version {version.version}) holds no dogbreed artifact; "
                                        f"register one with `dogbreed register model.tar.gz --name {name}`")
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(got, folder)
    log.info("%s is version %s", uri, version.version)
    return tar


def _version(client, name: str, ref: str, uri: str, where: str):
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except Exception as exc:  # noqa: BLE001
        if _missing(exc):
            raise DogbreedError(f"{uri}: no such model version in {tracking.public(where)}; `dogbreed register ARTIFACT --name {name} "
                                f"--alias ALIAS` adds one") from None
        raise DogbreedError(f"cannot read {uri} from {tracking.public(where)}: {tracking.reason(exc)}") from None


# what MLflow's stores answer for a model, version or alias that is not there (an unset alias is
# INVALID_PARAMETER_VALUE), from SQLite and a server alike; its other failures are the store's
MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in MISSING_CODES


def _parse(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (NAME, ALIAS or VERSION)."""
    name, _, ref = uri[len(SCHEME):].partition("@")
    if not ref:
        name, _, ref = name.rpartition("/")
    if not name or not ref:
        raise DogbreedError(f"{uri} is not a model URI; pass models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, ref


def run_of(uri: str, where: str) -> str | None:
    """The MLflow run that registered ``models:/...`` in the store ``where`` (its training's run where
    it had one there), or None where that store does not hold it."""
    name, ref = _parse(uri)
    try:
        return _version(_client(where), name, ref, uri, where).run_id
    except DogbreedError:
        return None


def _slug(uri: str) -> str:
    import hashlib

    return hashlib.sha256(uri.encode()).hexdigest()[:16]


# --- register --------------------------------------------------------------------------------------

def _artifact_files(tar_path: Path) -> tuple[dict, str]:
    """model.json and MODEL_CARD.md of an artifact, read without unpacking it."""
    try:
        with tarfile.open(tar_path) as tar:
            def text(name: str) -> str | None:
                try:
                    member = tar.extractfile(name)
                except KeyError:
                    return None
                return member.read().decode("utf-8") if member else None

            meta, card = text("model.json"), text("MODEL_CARD.md")
    except (OSError, tarfile.TarError) as exc:
        raise DogbreedError(f"{tar_path} is not a model artifact ({exc}); pass a run's model.tar.gz") from None
    if meta is None:
        raise DogbreedError(f"{tar_path} has no model.json: not a dogbreed artifact; pass a run's model.tar.gz")
    return json.loads(meta), card or ""


def register(artifact: str, name: str, *, aliases: tuple[str, ...] = (), promote: bool = False,
             data: str | None = None, uri: str, progress: bool = False) -> dict:
    """Add ``artifact`` as a new version of ``name`` and set ``aliases`` (with ``promote``: each only
    where the candidate is no worse than its holder, on one test set). Returns what was done."""
    if promote and not aliases:
        raise DogbreedError("--promote moves an alias: pass --alias ALIAS (champion, say)")
    local = remote.staged_file(artifact, progress=progress)
    if not Path(local).is_file():
        raise DogbreedError(f"model artifact {artifact} does not exist; train one with `dogbreed train`")
    meta, card = _artifact_files(Path(local))
    figures = Figures.of_meta(meta)
    client = _client(uri)
    decisions = {alias: _judge(client, name, alias, figures, artifact, data, progress) if promote
                 else (True, "without --promote") for alias in aliases}
    try:
        version = _log_version(client, uri, name, Path(local), meta, card, figures)
        for alias, (move, _) in decisions.items():
            if move:
                client.set_registered_model_alias(name, alias, version)
    except Exception as exc:  # noqa: BLE001 (the store's failure, in one line)
        raise DogbreedError(f"cannot register {artifact} in {tracking.public(uri)}: {tracking.reason(exc)}") from None
    return {"name": name, "version": int(version), "uri": f"{SCHEME}{name}/{version}",
            "aliases": {alias: {"moved": move, "why": why} for alias, (move, why) in decisions.items()}}


def _log_version(client, uri: str, name: str, tar: Path, meta: dict, card: str, figures: Figures) -> str:
    """The artifact as an MLflow model (in its training's run where it was tracked in this store,
    else in a run of its own), registered as the next version of ``name``."""
    import mlflow
    import mlflow.pyfunc

    from dogbreed.artifact import REQUIREMENTS

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    tracked = meta.get("tracking") or {}
    same_store = tracked.get("uri") == tracking.public(uri)
    run_id = tracked.get("run_id") if same_store and _run_exists(client, tracked.get("run_id")) else None
    experiment_id = tracking.experiment_id(client, tracking.EXPERIMENT, tracking.artifact_root(uri))
    with tempfile.TemporaryDirectory(prefix="dogbreed-register-") as tmp:
        card_path = Path(tmp) / "MODEL_CARD.md"
        card_path.write_text(card, encoding="utf-8")
        requirements = [*REQUIREMENTS.split(), f"mlflow>={mlflow.__version__.split('.')[0]}.0", "pandas"]  # code/'s, and the flavor's
        with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                              run_name=None if run_id else f"register-{name}", log_system_metrics=False):
            with warnings.catch_warnings():  # "An input example was not provided": one would be an image, run here
                warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
                info = mlflow.pyfunc.log_model(name=MODEL_PATH, python_model=str(PYFUNC_FILE),
                                               artifacts={ARTIFACT: str(tar), "MODEL_CARD.md": str(card_path)},
                                               pip_requirements=requirements, signature=_signature(),
                                               metadata={"dogbreed": {k: meta.get(k) for k in (
                                                   "backbone", "num_classes", "image_size", "dogbreed_version")}})
            active = mlflow.active_run().info.run_id
    tags = {**figures.tags(), "backbone": str(meta.get("backbone")), "dogbreed_version": str(meta.get("dogbreed_version"))}
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 (the first version of a new name)
        client.create_registered_model(name, description="a dogbreed classifier")
    version = client.create_model_version(name, info.model_uri, run_id=active, tags=tags,
                                          description=card[:DESCRIPTION_LIMIT], model_id=info.model_id)
    return str(version.version)


def _signature():
    """What the version takes: a column ``image`` of base64 images or file paths (one string each)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "image")]))


def _run_exists(client, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001
        return False


def _judge(client, name: str, alias: str, candidate: Figures, artifact: str, data: str | None,
           progress: bool) -> tuple[bool, str]:
    """(move the alias?, why in words): the candidate against ``alias``'s holder, on one test set."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        if _missing(exc):  # no such model, or the alias unset: nothing to beat
            return True, "no version held it"
        raise DogbreedError(f"cannot read {name}@{alias} from {tracking.public(client.tracking_uri)}: "
                            f"{tracking.reason(exc)}") from None
    theirs = Figures.of_tags(holder.tags)
    if data:
        candidate, theirs = _measured(artifact, data, progress), _measured(f"{SCHEME}{name}/{holder.version}", data,
                                                                           progress)
        where = f"on {data}'s test split"
    elif candidate.digest and candidate.digest == theirs.digest and candidate.complete() and theirs.complete():
        where = "on the same test set"
    else:
        raise DogbreedError(f"cannot compare with {name}@{alias} (version {holder.version}): their test sets differ "
                            f"or a figure is missing; pass --data DIR to judge both on DIR's test split")
    better = candidate.accuracy >= theirs.accuracy and candidate.ece <= theirs.ece
    verdict = "no worse than" if better else "worse than"
    return better, (f"{candidate.said()} {where}, {verdict} version {holder.version}'s {theirs.said()}")


def _measured(model: str, data: str, progress: bool) -> Figures:
    from dogbreed import evaluate

    with tempfile.TemporaryDirectory(prefix="dogbreed-promote-") as tmp:
        doc = evaluate.run(model, data, out=tmp, progress=progress)
    return Figures(doc["accuracy"], doc["ece"], None)
