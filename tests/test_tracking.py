"""MLflow tracking against a real tracking server process on loopback (`mlflow server`, a SQLite
store, artifacts served by the server): what a run logs, read back through MLflow's own client,
and a run that outlives its server."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dogbreed import config, evaluate, registry
from dogbreed.run import train

from .conftest import TINY, free_port, wait_for_http

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

START_TIMEOUT_S = 90


class Server:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(f"{self.url}/health", START_TIMEOUT_S, proc=self.proc,
                          why=lambda: (folder / "server.log").read_text()[-2000:])
        except RuntimeError:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.proc.wait(30)
        self.log.close()


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path)
    yield running
    running.kill()


def _config(data, out, **more):
    return config.resolve(overrides={**TINY, "data": str(data), "out": str(out), "epochs": 3, **more})


def test_a_run_is_logged_with_its_config_epochs_figures_rules_and_files(server, synth_data, tmp_path):
    result = train(_config(synth_data, tmp_path / "runs", tracking_uri=server.url), progress=False)
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("dogbreed")
    run, = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.tags["run_dir"] == str(result.run_dir.resolve())
    params = run.data.params
    assert params["backbone"] == "resnet18" and params["epochs"] == "3" and params["image_size"] == "64"
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()[1:]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([float(r.split(",")[3]) for r in rows], rel=1e-5)
    results = json.loads((result.run_dir / "results.json").read_text())
    for key in ("test_accuracy", "test_loss", "test_top5"):
        assert run.data.metrics[key] == pytest.approx(results[key])
    assert run.data.metrics["calibration.temperature"] == pytest.approx(results["calibration"]["temperature"])
    assert run.data.metrics["saliency_focus.lift"] == pytest.approx(results["saliency_focus"]["lift"])
    rules = {k: v for k, v in run.data.tags.items() if k.startswith("rule.")}
    assert rules and set(rules.values()) <= {"triggered", "no issues found", "no data", "not applicable", "summary"}
    assert rules["rule.Overfit"] in ("triggered", "no issues found", "no data")
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "model.tar.gz", "top_losses.png", "metrics.csv", "profile"} <= files
    fetched = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "back")))
    assert json.loads(fetched.read_text()) == results

    # what judges the model later goes to its run: the artifact names it
    doc = evaluate.run(str(result.artifact), str(synth_data), out=str(tmp_path / "evaluation"), progress=False,
                       tracking_uri=server.url)
    judged = client.get_run(run.info.run_id)
    assert judged.data.metrics["evaluate.test.accuracy"] == pytest.approx(doc["accuracy"])
    assert judged.data.metrics["evaluate.test.ece"] == pytest.approx(doc["ece"])
    assert judged.info.status == "FINISHED" and judged.info.end_time == run.info.end_time  # judged, not reopened
    assert "evaluation/test/evaluation.json" in {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/test")}
    done = registry.register(str(result.artifact), "dogs", aliases=("champion",), uri=server.url)
    assert client.get_model_version("dogs", str(done["version"])).run_id == run.info.run_id


def test_a_run_outlives_its_tracking_server_and_says_what_was_not_logged(server, synth_data, tmp_path, caplog):
    def kill_after_the_first_epoch(row):
        if row["epoch"] == 2:
            server.kill()

    with caplog.at_level(logging.WARNING, logger="dogbreed"):
        result = train(_config(synth_data, tmp_path / "runs", tracking_uri=server.url, epochs=4, profile=False),
                       progress=False, on_epoch=kill_after_the_first_epoch)
    assert result.artifact.is_file() and json.loads((result.run_dir / "results.json").read_text())["test_n"] == 8
    failed = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert len(failed) == 1 and server.url in failed[0] and "the run goes on without it" in failed[0]
    lost, = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow: not logged")]
    assert "metrics" in lost and "files" in lost and "the run's folder has everything" in lost


def test_track_keeps_a_local_store_beside_the_runs_and_resume_goes_on_in_the_same_run(synth_data, tmp_path):
    result = train(_config(synth_data, tmp_path / "runs", track=True, profile=False, epochs=2), progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] == pytest.approx(result.test["test_accuracy"])
    assert (tmp_path / "runs" / "mlartifacts").is_dir()
    assert "model.tar.gz" in {a.path for a in client.list_artifacts(run.info.run_id)}
    resumed = train(_config(synth_data, tmp_path / "runs", track=True, profile=False, epochs=3), progress=False,
                    resume=result.run_dir)
    again, = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    assert again.data.tags["resumed"] == "true"
    assert again.data.metrics["test_accuracy"] == pytest.approx(resumed.test["test_accuracy"])


def test_a_study_is_a_parent_run_with_one_nested_run_per_trial_and_the_final_run(server, synth_data, tiny_weights,
                                                                                  tmp_path):
    from dogbreed.cli import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"]
    assert main(["tune", "--data", str(synth_data), "--out", str(tmp_path), "--no-pretrained", "--no-progress", *flags,
                 "--weights", str(tiny_weights), "--trials", "3", "--parallel", "1",
                 "--tracking-uri", server.url]) == 0
    best = json.loads((tmp_path / "tune-dogbreed" / "best.json").read_text())
    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
    parent, = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "tune-dogbreed" and parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(best["best_trial"]["number"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best["best_trial"]["value"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = sorted((r for r in children if r.data.tags.get("trial") != "final"), key=lambda r: int(r.data.tags["trial"]))
    assert [r.data.tags["trial"] for r in trials] == ["0", "1", "2"]
    rows = {int(row["number"]): row for row in _csv(tmp_path / "tune-dogbreed" / "trials.csv")}
    for run in trials:
        row = rows[int(run.data.tags["trial"])]
        assert run.data.tags["state"] == row["state"]
        assert float(run.data.params["lr"]) == pytest.approx(float(row["param_lr"]), rel=1e-6)
        if row["value"]:
            assert run.data.metrics["value"] == pytest.approx(float(row["value"]))
        steps = client.get_metric_history(run.info.run_id, "val_loss")
        assert steps and [m.step for m in steps] == list(range(1, len(steps) + 1))  # epoch by epoch, as pruned
    final, = [r for r in children if r.data.tags.get("trial") == "final"]
    assert final.data.metrics["test_accuracy"] == pytest.approx(best["final_run"]["test_accuracy"])
    assert {"best.json", "trials.csv", "plots"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    # tuned again with one more trial: the same parent run gains that trial alone
    assert main(["tune", "--data", str(synth_data), "--out", str(tmp_path), "--no-pretrained", "--no-progress", *flags,
                 "--weights", str(tiny_weights), "--trials", "4", "--parallel", "1",
                 "--tracking-uri", server.url]) == 0
    runs = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent.info.run_id]
    trials = [r.data.tags["trial"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
              and r.data.tags.get("trial") != "final"]
    assert sorted(trials) == ["0", "1", "2", "3"]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def _csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_store_that_never_answers_costs_the_run_nothing_but_a_warning(synth_data, tmp_path, caplog, monkeypatch):
    """A server that accepts connections and never answers: each request times out (2 s here), the
    first timeout is said once, and the run ends without waiting on the rest."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepted by the kernel, never read or answered
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with caplog.at_level(logging.WARNING, logger="dogbreed"):
            result = train(_config(synth_data, tmp_path / "runs", tracking_uri=url, profile=False), progress=False)
    finally:
        silent.close()
    assert result.artifact.is_file()
    failed = [r.getMessage() for r in caplog.records if "MLflow tracking at" in r.getMessage()]
    assert failed == [f"MLflow tracking at {url} failed (sending start: timed out); the run goes on without it"]
    lost, = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow: not logged")]
    assert "after the failure above" in lost and "files" in lost


def test_a_study_whose_final_training_fails_ends_its_parent_run_failed(synth_data, tmp_path):
    """The study's outcome is logged and its final training raises (its data set is gone): the
    parent run ends FAILED, not left RUNNING."""
    import optuna

    from dogbreed.errors import DogbreedError
    from dogbreed.tune.options import TuneOptions
    from dogbreed.tune.tuner import finish

    study = optuna.create_study(study_name="gone", direction="minimize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, value=0.5, intermediate_values={1: 0.7, 2: 0.5},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = _config(tmp_path / "no-data", tmp_path, tracking_uri=store, profile=False)
    with pytest.raises(DogbreedError, match="no-data"):
        finish(study, TuneOptions(study="gone", trials=1), base, "sqlite:///:memory:", tmp_path / "tune-gone",
               progress=False)
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("dogbreed").experiment_id])
    parent, = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "tune-gone" and parent.info.status == "FAILED"
    assert [r.data.tags["trial"] for r in runs if r is not parent] == ["0"]


def test_a_stores_password_never_travels_in_files_or_lines():
    """model.json, mlflow_run.json and best.json keep the store's address to match runs on: without
    its password, which the warnings and errors leave out too."""
    from dogbreed.tracking import public

    assert public("http://ci:s3cret@mlflow.internal:5000") == "http://ci:***@mlflow.internal:5000"
    assert public("postgresql://u:pw@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    assert public("sqlite:////runs/mlflow.db") == "sqlite:////runs/mlflow.db"
    assert public("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
