"""Data, predictions and artifacts on S3, against a real S3 server process on loopback (moto's)."""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import TINY, cache_use, free_port, one_line_error
from .data.test_fetch import dataset_zip
from .serve.conftest import running_server
from .serve.test_routes import invoke

s3fs = pytest.importorskip("s3fs")
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"] + [
    "--no-pretrained", "--epochs=1", "--aug-views=1", "--no-progress", "--no-profile"]
NO_AWS_FILES = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server as its own process, and the environment that points AWS's clients at it."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {**NO_AWS_FILES, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.ls("")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the S3 server did not start: {Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield env, fs
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def bucket(s3, synth_data):
    """The synthetic data set uploaded to s3://dogs/set/."""
    env, fs = s3
    fs.mkdir("dogs")
    fs.put(str(synth_data), "dogs/set", recursive=True)
    return env, fs, "s3://dogs/set/"


def cli(env: dict, tmp_path: Path, *args: str):
    """``dogbreed ARGS`` with the S3 server's environment (and no other AWS settings) and a cache (and
    mirror) of this test's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "dogbreed", *args], capture_output=True, text=True, timeout=300,
                          env={**clean, **env, "DOGBREED_CACHE": str(tmp_path / "cache")}, cwd=tmp_path)


def test_train_from_s3_uploads_the_artifact_and_predicts_from_s3(bucket, tmp_path):
    env, fs, url = bucket
    check = cli(env, tmp_path, "data", "check", url)
    assert check.returncode == 0 and "4 classes; train 48, valid 8, test 8 images" in check.stdout, check.stderr

    # Image decoders in worker processes: they read the local mirror, never s3fs (not fork-safe).
    trained = cli(env, tmp_path, "train", "--data", url, "--out", "s3://dogs/runs/", *FLAGS, "--workers=2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "fetching" not in trained.stdout  # data check staged every image; train found its mirror current
    (run,) = (tmp_path / "runs").iterdir()
    uploaded = f"dogs/runs/{run.name}"
    assert f"uploaded: s3://{uploaded}/model.tar.gz" in trained.stdout
    assert fs.cat_file(f"{uploaded}/model.tar.gz") == (run / "model.tar.gz").read_bytes()
    assert {Path(p).name for p in fs.ls(uploaded)} == {"model.tar.gz", "results.json", "metrics.csv", "config.yaml",
                                                       "labels.json"}
    assert f"data: {url}" in (run / "config.yaml").read_text()  # a resume stages the same data set again

    one = cli(env, tmp_path, "predict", "--model", str(run / "model.tar.gz"), "--json",
              "s3://dogs/set/test/001.Affenpinscher/")
    assert one.returncode == 0, one.stderr
    files = [line.split('"file": "')[1].split('"')[0] for line in one.stdout.splitlines()]
    assert files == sorted(f"s3://{k}" for k in fs.find("dogs/set/test/001.Affenpinscher")) and len(files) == 2
    single = cli(env, tmp_path, "predict", "--model", str(run / "model.tar.gz"), "--json", files[0])
    assert single.returncode == 0, single.stderr
    alone, first = json.loads(single.stdout), json.loads(one.stdout.splitlines()[0])  # batch of 1, batch of 2
    assert alone["file"] == first["file"] and alone["topk_labels"] == first["topk_labels"]
    assert max(abs(a - b) for a, b in zip(alone["topk_probs"], first["topk_probs"])) < 1e-4


def test_the_embedding_cache_keys_s3_objects_not_their_copies(bucket, tmp_path):
    env, fs, url = bucket
    first = cli(env, tmp_path, "train", "--data", url, "--out", "runs", "--name", "first", *FLAGS)
    assert first.returncode == 0, first.stderr[-2000:]
    assert cache_use(tmp_path / "runs" / "first") == {"hits": 0, "computed": 3, "ranks": 1}
    shutil.rmtree(tmp_path / "cache" / "s3")  # a new mirror: every file copied again, with new mtimes
    again = cli(env, tmp_path, "train", "--data", url, "--out", "runs", "--name", "again", *FLAGS)
    assert again.returncode == 0 and "fetching 64 of 64 images" in again.stdout, again.stderr[-2000:]
    assert cache_use(tmp_path / "runs" / "again") == {"hits": 3, "computed": 0, "ranks": 1}

    # One test image replaced upstream (new ETag): it alone is fetched, and the test entry recomputed.
    victim = sorted(fs.find("dogs/set/test"))[0]
    original = fs.cat_file(victim)
    try:
        fs.pipe_file(victim, fs.cat_file(sorted(fs.find("dogs/set/test"))[-1]))
        changed = cli(env, tmp_path, "train", "--data", url, "--out", "runs", "--name", "changed", *FLAGS)
        assert changed.returncode == 0 and "fetching 1 of 64 images" in changed.stdout, changed.stderr[-2000:]
        assert cache_use(tmp_path / "runs" / "changed") == {"hits": 2, "computed": 1, "ranks": 1}
    finally:
        fs.pipe_file(victim, original)


def test_tune_reads_its_data_from_s3(bucket, tmp_path):
    env, _, url = bucket
    proc = cli(env, tmp_path, "tune", "--data", url, "--out", "tuned", "--trials", "2", "--parallel", "1",
               *FLAGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "tuned" / "tune-dogbreed" / "best" / "model.tar.gz").is_file()


def test_s3_failures_are_one_line_each(bucket, tmp_path):
    env, fs, url = bucket
    one_line_error(cli(env, tmp_path, "train", "--data", "s3://no-such-bucket/set/", *FLAGS), "no-such-bucket",
                   "does not exist")
    one_line_error(cli(env, tmp_path, "train", "--data", "s3://dogs/no-such-prefix/", *FLAGS), "holds no images")
    one_line_error(cli(env, tmp_path, "train", "--data", url, "--out", "s3://no-such-bucket/runs/", *FLAGS),
                   "no-such-bucket", "does not exist")
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
    # The images are listed before the model loads: a wrong URL fails at once.
    one_line_error(cli(env, tmp_path, "predict", "--model", "unused.tar.gz", "s3://dogs/set/test/nothing.jpg"),
                   "s3://dogs/set/test/nothing.jpg", "does not exist")
    one_line_error(cli(env, tmp_path, "predict", "--model", "unused.tar.gz", "s3://no-such-bucket/photos/"),
                   "no-such-bucket", "does not exist")
    anonymous = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    one_line_error(cli(anonymous, tmp_path, "train", "--data", url, *FLAGS), "no AWS credentials")


def test_a_key_that_would_leave_the_mirror_is_refused(bucket, tmp_path):
    """S3 keys are any strings: one with a '..' part would be copied outside the mirror folder."""
    env, fs, _ = bucket
    fs.pipe("dogs/escape/train/001.Affenpinscher/../../../../../escaped.jpg", b"\xff\xd8 not a real jpeg")
    proc = cli(env, tmp_path, "train", "--data", "s3://dogs/escape/", *FLAGS)
    one_line_error(proc, "'..'", "escaped.jpg")
    assert not list(tmp_path.rglob("escaped.jpg"))  # nothing fetched, inside the mirror or out of it


@pytest.fixture(scope="module")
def s3_model(bucket, tmp_path_factory):
    """A model trained on the bucket's data set with --out s3://: its artifact's URL."""
    env, fs, url = bucket
    where = tmp_path_factory.mktemp("s3-model")
    trained = cli(env, where, "train", "--data", url, "--out", "s3://dogs/models/", "--name", "m", *FLAGS)
    assert trained.returncode == 0, trained.stderr[-2000:]
    return "s3://dogs/models/m/model.tar.gz"


def test_evaluate_predict_and_serve_take_the_model_data_and_ood_from_s3(bucket, s3_model, tmp_path):
    """Every path evaluate, predict and serve take may be s3://: inputs staged, evaluate's results
    uploaded, and never a local folder named `s3:`."""
    env, fs, url = bucket
    evaluated = cli(env, tmp_path, "evaluate", "--model", s3_model, "--data", url, "--ood", "s3://dogs/set/valid/",
                    "--out", "s3://dogs/eval/")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert ("results: s3://dogs/eval/evaluation.json (and selective.png, reliability.png, top_losses.png, "
            "confused_pairs.png, scores.png)") in evaluated.stdout
    assert {Path(p).name for p in fs.ls("dogs/eval")} == {"evaluation.json", "selective.png", "reliability.png",
                                                          "scores.png", "top_losses.png", "confused_pairs.png"}
    doc = json.loads(fs.cat_file("dogs/eval/evaluation.json"))
    assert (doc["model"], doc["data"], doc["n"], doc["ood"]["folder"], doc["ood"]["out_n"]) == (
        s3_model, url, 8, "s3://dogs/set/valid/", 8)

    predicted = cli(env, tmp_path, "predict", "--model", s3_model, "--json", "s3://dogs/set/test/001.Affenpinscher/")
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 2, predicted.stderr[-2000:]
    refused = cli(env, tmp_path, "predict", "--model", s3_model, "--explain", "s3://dogs/set/test/001.Affenpinscher/")
    assert refused.returncode == 1 and "is on S3: give --out DIR for its --explain figure" in refused.stderr
    explained = cli(env, tmp_path, "predict", "--model", s3_model, "--json", "--explain", "--out", str(tmp_path / "why"),
                    "s3://dogs/set/test/001.Affenpinscher/")
    assert explained.returncode == 0, explained.stderr[-2000:]
    figures = [json.loads(line)["explanation"] for line in explained.stdout.splitlines()]
    assert len(figures) == 2 and all(Path(f).parent == tmp_path / "why" and Path(f).is_file() for f in figures)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    photo = fs.cat_file(sorted(fs.find("dogs/set/test"))[0])
    with running_server(s3_model, "--backend", "eager", "--capture", "s3://dogs/capture/",
                        env={**clean, **env, "DOGBREED_CACHE": str(tmp_path / "cache")}, output=(said := [])) as served:
        answers = [invoke(served, photo) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200] * 3
    assert json.loads(answers[0][2])["verdict"] in ("breed", "unsure", "not_a_dog")
    assert any(f"serving {s3_model} on" in line for line in said), said
    # the capture files were uploaded when the server stopped, in SageMaker's layout
    fs.invalidate_cache()
    keys = fs.find("dogs/capture")
    assert keys and all(re.fullmatch(r"dogs/capture/dogbreed/AllTraffic/\d{4}/\d\d/\d\d/\d\d/[\w-]+\.jsonl", k) for k in keys)
    docs = [json.loads(line) for k in keys for line in fs.cat_file(k).decode().splitlines()]
    assert sorted(d["eventMetadata"]["eventId"] for d in docs) == sorted(h["x-dogbreed-event-id"] for _, h, _ in answers)
    assert all(base64.b64decode(d["captureData"]["endpointInput"]["data"]) == photo for d in docs)
    assert not (tmp_path / "s3:").exists()


def test_evaluate_s3_failures_are_one_line_each_before_any_work(bucket, s3_model, tmp_path):
    env, fs, url = bucket
    one_line_error(cli(env, tmp_path, "evaluate", "--model", "s3://dogs/models/m/nothing.tar.gz", "--data", url),
                   "s3://dogs/models/m/nothing.tar.gz does not exist on S3")
    one_line_error(cli(env, tmp_path, "evaluate", "--model", "s3://dogs/models/m/", "--data", url),
                   "is a prefix, not an object")
    one_line_error(cli(env, tmp_path, "evaluate", "--model", s3_model, "--data", url, "--out", "s3://no-such-bucket/ev/"),
                   "no-such-bucket", "does not exist")
    one_line_error(cli(env, tmp_path, "evaluate", "--model", s3_model, "--data", url, "--ood", "s3://dogs/nothing/"),
                   "s3://dogs/nothing/ holds no images; pass a folder of photos of anything but the model's breeds")
    assert not (tmp_path / "evaluation").exists() and not (tmp_path / "s3:").exists()


def test_export_reads_the_artifact_and_data_from_s3_and_writes_there(bucket, s3_model, tmp_path):
    env, fs, url = bucket
    exported = cli(env, tmp_path, "export", s3_model, "--format", "onnx", "--data", url,
                   "--out", "s3://dogs/exports/m-onnx.tar.gz")
    assert exported.returncode == 0 and "wrote s3://dogs/exports/m-onnx.tar.gz" in exported.stdout, exported.stderr[-2000:]
    fs.get("dogs/exports/m-onnx.tar.gz", str(tmp_path / "m-onnx.tar.gz"))
    with tarfile.open(tmp_path / "m-onnx.tar.gz") as tar:
        meta = json.load(tar.extractfile("model.json"))
        assert "model.onnx" in tar.getnames()
    assert meta["backends"]["onnx"]["images"] == 8  # checked on the valid split staged from S3

    beside = cli(env, tmp_path, "export", s3_model)  # no --out: beside the artifact, on S3 as it is
    assert beside.returncode == 0 and "wrote s3://dogs/models/m/model-torchscript.tar.gz" in beside.stdout, beside.stderr
    assert fs.exists("dogs/models/m/model-torchscript.tar.gz")
    one_line_error(cli(env, tmp_path, "export", s3_model, "--out", s3_model), "is the artifact being exported")
    one_line_error(cli(env, tmp_path, "export", s3_model, "--out", "s3://dogs/exports/"), "names a prefix, not an object")
    assert not (tmp_path / "s3:").exists() and not list((tmp_path / "cache" / "s3-objects").rglob("*-torchscript*"))


def test_data_synth_uploads_to_s3_and_data_fetch_reads_its_zip_there(bucket, synth_data, tmp_path):
    env, fs, _ = bucket
    made = cli(env, tmp_path, "data", "synth", "s3://dogs/synth/", "--classes", "2", "--per-class", "6", "--size", "32",
               "--unseen", "1", "--no-progress")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "wrote a synthetic data set: s3://dogs/synth/ (2 classes" in made.stdout
    assert "--ood s3://dogs/synth/unseen`" in made.stdout
    keys = fs.find("dogs/synth")
    assert len(keys) == 2 * 6 + 3 + 1 and {k.split("/")[2] for k in keys} == {"train", "valid", "test", "unseen",
                                                                               "boxes.json"}
    one_line_error(cli(env, tmp_path, "data", "synth", "s3://dogs/synth/"), "s3://dogs/synth/ already holds objects")

    body = dataset_zip(synth_data)
    fs.pipe("dogs/zips/dogImages.zip", body)
    digest = hashlib.sha256(body).hexdigest()
    for flag, value in (("--zip", "s3://dogs/zips/dogImages.zip"), ("--url", "s3://dogs/zips/dogImages.zip")):
        dest = tmp_path / flag.strip("-")
        fetched = cli(env, tmp_path, "data", "fetch", "--dest", str(dest), flag, value, "--sha256", digest, "--no-progress")
        assert fetched.returncode == 0 and f"data set ready: {dest / 'dogImages'}" in fetched.stdout, fetched.stderr
    one_line_error(cli(env, tmp_path, "data", "fetch", "--dest", str(tmp_path / "w"), "--zip",
                       "s3://dogs/zips/dogImages.zip", "--sha256", "0" * 64), "does not match --sha256")
    one_line_error(cli(env, tmp_path, "data", "fetch", "--dest", "s3://dogs/fetched/"),
                   "the data set is extracted on this machine; pass a local folder")
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "w").exists()


def test_train_reads_its_recipe_rules_and_weights_from_s3_and_local_only_paths_say_so(bucket, tmp_path):
    env, fs, url = bucket
    fs.pipe("dogs/conf/recipe.yaml", b"name: from-s3\nlabel_smoothing: 0.1\n")
    fs.pipe("dogs/conf/rules.yaml", b"Overfit: {ratio_threshold: 2}\n")
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    fs.put(str(tmp_path / "resnet18.pth"), "dogs/conf/resnet18.pth")
    trained = cli(env, tmp_path, "train", "--config", "s3://dogs/conf/recipe.yaml", "--rules", "s3://dogs/conf/rules.yaml",
                  "--weights", "s3://dogs/conf/resnet18.pth", "--data", url,
                  *[f for f in FLAGS if f != "--no-profile"], "--trace-steps=0")
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = tmp_path / "runs" / "from-s3"
    assert "label_smoothing: 0.1" in (run / "config.yaml").read_text()
    assert "weights: s3://dogs/conf/resnet18.pth" in (run / "config.yaml").read_text()  # a resume stages it again
    assert "file:resnet18.pth" in trained.stdout
    assert (run / "profile" / "rules.yaml").read_bytes() == fs.cat_file("dogs/conf/rules.yaml")
    one_line_error(cli(env, tmp_path, "train", "--config", "s3://dogs/conf/nothing.yaml", "--data", url),
                   "s3://dogs/conf/nothing.yaml does not exist on S3")

    # Where only a path on this machine will do, one line says why.
    for args, why in ((["train", "--resume", "s3://dogs/runs/r"], "a run continues from its checkpoints"),
                      (["train", "--data", url, "--cache-dir", "s3://dogs/cache/"], "the embedding cache is a folder"),
                      (["report", "s3://dogs/runs/r"], "the report reads the run's profile"),
                      (["tune", "show", "dogbreed", "--out", "s3://dogs/tuning/"], "the study's tune.db is a file"),
                      (["demo", "--out", "s3://dogs/demo/"], "written on this machine")):
        one_line_error(cli(env, tmp_path, *args), why, "pass a path on this machine")
    assert not (tmp_path / "s3:").exists()


def test_transform_reads_a_prefix_or_a_manifest_on_s3_and_writes_out_files_there(bucket, s3_model, tmp_path):
    env, fs, url = bucket
    scored = cli(env, tmp_path, "transform", "--model", s3_model, "--input", "s3://dogs/set/test/",
                 "--output", "s3://dogs/scored/", "--backend", "eager")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "8 input(s), 0 already done, 8 written, 0 failed" in scored.stdout
    fs.invalidate_cache()
    tests = sorted(k[len("dogs/set/test/"):] for k in fs.find("dogs/set/test"))
    assert sorted(k[len("dogs/scored/"):] for k in fs.find("dogs/scored")) == [f"{k}.out" for k in tests]
    assert json.loads(fs.cat_file(f"dogs/scored/{tests[0]}.out"))["topk_labels"]
    again = cli(env, tmp_path, "transform", "--model", s3_model, "--input", "s3://dogs/set/test/",
                "--output", "s3://dogs/scored/", "--backend", "eager")
    assert again.returncode == 0 and "8 input(s), 8 already done, 0 written" in again.stdout, again.stderr[-2000:]

    fs.pipe_file("dogs/jobs/two.manifest", json.dumps([{"prefix": "s3://dogs/set/test/"}, *tests[:2]]).encode())
    listed = cli(env, tmp_path, "transform", "--model", s3_model, "--input", "s3://dogs/jobs/two.manifest",
                 "--output", "s3://dogs/two/", "--backend", "eager")
    assert listed.returncode == 0 and "2 input(s), 0 already done, 2 written" in listed.stdout, listed.stderr[-2000:]
    fs.invalidate_cache()
    assert sorted(fs.find("dogs/two")) == [f"dogs/two/{k}.out" for k in tests[:2]]
    assert not (tmp_path / "s3:").exists()
