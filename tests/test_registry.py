"""The model registry against a real MLflow store (SQLite, as ``--track`` keeps one): ``dogbreed
register`` and its aliases, ``--promote``'s rule, ``models:/NAME@ALIAS`` in serve, predict and
export, and the registered version as an MLflow model: in-process through ``mlflow.pyfunc`` and
hosted by ``mlflow models serve``."""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from dogbreed import registry
from dogbreed.artifact import load_artifact
from dogbreed.runtime import pipeline
from dogbreed.runtime.pipeline import Options

from .conftest import free_port, one_line_error, run_cli, wait_for_http
from .serve.conftest import running_server

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

NAME = "dogs"
READY_S = 120


@pytest.fixture(scope="module")
def store(trained_run, tmp_path_factory):
    """A store holding the trained run's artifact as version 1 of ``dogs``, alias ``champion``."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'store.db'}"
    done = run_cli("register", str(trained_run.artifact), "--name", NAME, "--alias", "champion", "--json",
                   env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    return {"uri": uri, "folder": folder, "registered": json.loads(done.stdout.strip().splitlines()[-1])}


@pytest.fixture
def in_store(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    return store["uri"]


def _meta(artifact: Path) -> dict:
    with tarfile.open(artifact) as tar:
        return json.loads(tar.extractfile("model.json").read())


def _repacked(artifact: Path, dest: Path, *, meta=None, state=None) -> Path:
    """A copy of ``artifact`` with model.json changed by ``meta(doc)`` and model.pth by ``state(sd)``."""
    with tarfile.open(artifact) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    if meta:
        doc = json.loads(files["model.json"])
        meta(doc)
        files["model.json"] = json.dumps(doc).encode()
    if state:
        weights = torch.load(io.BytesIO(files["model.pth"]), weights_only=True)
        state(weights)
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        files["model.pth"] = buffer.getvalue()
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def test_a_version_is_the_artifact_with_its_card_figures_and_test_set_digest(store, trained_run, in_store):
    assert store["registered"]["version"] == 1 and store["registered"]["aliases"]["champion"]["moved"]
    client = MlflowClient(in_store)
    version = client.get_model_version_by_alias(NAME, "champion")
    meta = _meta(trained_run.artifact)
    assert str(version.version) == "1"
    assert float(version.tags["test_accuracy"]) == meta["metrics"]["test_accuracy"]
    assert float(version.tags["test_ece"]) == meta["metrics"]["test_ece"]
    assert version.tags["data_digest"] == meta["data_digest"]["test"]
    with tarfile.open(trained_run.artifact) as tar:
        card = tar.extractfile("MODEL_CARD.md").read().decode()
    assert version.description == card[:registry.DESCRIPTION_LIMIT]
    fetched = registry.fetch(f"models:/{NAME}@champion")
    assert fetched.read_bytes() == Path(trained_run.artifact).read_bytes()  # the artifact, byte for byte
    fetched_at = fetched.stat().st_mtime_ns
    assert registry.fetch(f"models:/{NAME}/1") == fetched and fetched.stat().st_mtime_ns == fetched_at  # from the cache


def test_serve_predict_and_transform_answer_from_a_models_uri_as_from_the_file(store, trained_run, samples, in_store, tmp_path):
    photo = sorted(samples.glob("*.jpg"))[0]
    env = {"MLFLOW_TRACKING_URI": in_store}
    by_uri = run_cli("predict", str(photo), "--model", f"models:/{NAME}@champion", "--json", env=env)
    by_file = run_cli("predict", str(photo), "--model", str(trained_run.artifact), "--json", env=env)
    assert by_uri.returncode == 0, by_uri.stderr
    assert json.loads(by_uri.stdout) == json.loads(by_file.stdout)
    with running_server(f"models:/{NAME}@champion", "--backend", "eager", env=env) as url:
        request = urllib.request.Request(f"{url}/invocations", data=photo.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())
    expected = {k: v for k, v in json.loads(by_file.stdout).items() if k != "file"}
    assert served == expected
    scored = run_cli("transform", "--model", f"models:/{NAME}@champion", "--input", str(photo), "--output",
                     str(tmp_path / "scored"), "--backend", "eager", env=env)
    assert scored.returncode == 0, scored.stderr
    _close([json.loads((tmp_path / "scored" / f"{photo.name}.out").read_text())], [expected])  # its own batching
    one_line_error(run_cli("predict", str(photo), "--model", f"models:/{NAME}@nobody", env=env),
                   f"models:/{NAME}@nobody", "no such model version")
    one_line_error(run_cli("export", f"models:/{NAME}@champion", "--format", "onnx", env=env), "--out")


def test_promote_moves_the_alias_only_for_a_model_no_worse_on_the_same_test_set(store, trained_run, synth_data,
                                                                               in_store, tmp_path):
    client = MlflowClient(in_store)
    env = {"MLFLOW_TRACKING_URI": in_store}
    held = str(client.get_model_version_by_alias(NAME, "champion").version)
    meta = _meta(trained_run.artifact)
    assert meta["metrics"]["test_accuracy"] > 0.5  # the fixture's model learned: a model answering at chance is worse

    worse = _repacked(trained_run.artifact, tmp_path / "worse.tar.gz",
                      meta=lambda doc: doc["metrics"].update(test_accuracy=doc["metrics"]["test_accuracy"] - 0.1))
    refused = run_cli("register", str(worse), "--name", NAME, "--alias", "champion", "--promote", env=env)
    assert refused.returncode == 0, refused.stderr
    assert f"{NAME}@champion not moved:" in refused.stdout and "worse than version" in refused.stdout
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == held  # added, not promoted

    elsewhere = _repacked(trained_run.artifact, tmp_path / "elsewhere.tar.gz",
                          meta=lambda doc: doc["data_digest"].update(test="0" * 64))
    versions = len(client.search_model_versions(f"name='{NAME}'"))
    one_line_error(run_cli("register", str(elsewhere), "--name", NAME, "--alias", "champion", "--promote", env=env),
                   "test sets differ", "--data")
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions  # refused before anything was added

    # judged again on --data: a head of zeros answers every image alike, at chance
    blank = _repacked(trained_run.artifact, tmp_path / "blank.tar.gz",
                      state=lambda sd: [sd[k].zero_() for k in sd if k.startswith("fc.")])
    done = registry.register(str(blank), NAME, aliases=("champion",), promote=True, data=str(synth_data), uri=in_store)
    assert not done["aliases"]["champion"]["moved"]
    assert "on " in done["aliases"]["champion"]["why"] and "test split" in done["aliases"]["champion"]["why"]

    same = registry.register(str(trained_run.artifact), NAME, aliases=("champion",), promote=True, uri=in_store)
    assert same["aliases"]["champion"]["moved"], same  # equal figures on the same test set: no worse
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == str(same["version"])


def _dogbreed_answers(artifact: Path, photos: list[Path]) -> list[dict]:
    model = load_artifact(artifact)  # eager, as the flavor runs below
    return pipeline.predict(model, [pipeline.decode(model, p.read_bytes()) for p in photos], Options.of(model))


def _close(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a["topk_labels"] == b["topk_labels"] and a["verdict"] == b["verdict"]
        assert a["topk_probs"] == pytest.approx(b["topk_probs"], abs=1e-4)  # both rounded to 6 places, from two loads


def test_the_registered_version_loads_as_an_mlflow_model_and_answers_as_dogbreed(store, trained_run, samples, in_store,
                                                                               monkeypatch):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("DOGBREED_BACKEND", "eager")
    photos = sorted(samples.glob("*.jpg"))[:3]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in photos[:2]] + [str(photos[2])]})
    got = model.predict(frame).to_dict("records")
    _close(got, _dogbreed_answers(trained_run.artifact, photos))
    with pytest.raises(MlflowException, match="neither a file on this machine nor base64"):
        model.predict(pd.DataFrame({"image": ["not an image!"]}))
    with pytest.raises(MlflowException, match="image 0"):
        model.predict(pd.DataFrame({"image": [base64.b64encode(b"GIF89a but not really").decode()]}))


def test_mlflow_models_serve_hosts_the_version_and_answers_a_dataframe_request(store, trained_run, samples, in_store,
                                                                             tmp_path):
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    log = open(tmp_path / "mlflow-serve.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{NAME}/1",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": in_store, "DOGBREED_BACKEND": "eager",
             "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")})  # its uvicorn is the environment's
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", READY_S, proc=proc, why=lambda: (tmp_path / "mlflow-serve.log").read_text()[-2000:])
        photos = sorted(samples.glob("*.jpg"))[:2]
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(p.read_bytes()).decode()] for p in photos]}}

        def post(doc):
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(doc).encode(),
                                             headers={"Content-Type": "application/json"})
            return urllib.request.urlopen(request, timeout=60)

        with post(body) as response:
            got = json.loads(response.read())["predictions"]
        _close(got, _dogbreed_answers(trained_run.artifact, photos))
        with pytest.raises(urllib.error.HTTPError) as refused:
            post({"dataframe_split": {"columns": ["image"], "data": [["not an image!"]]}})
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["error_code"] == "INVALID_PARAMETER_VALUE"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # mlflow's launcher and its uvicorn
        proc.wait(30)
        log.close()
