"""``dogbreed export``: TorchScript and ONNX variants of an artifact, their answers, and their names."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.cli import main
from dogbreed.export import export
from dogbreed.predict import predict_files
from dogbreed.runtime.pipeline import Options

from .conftest import one_line_error, run_cli
from .serve.conftest import running_server
from .serve.test_routes import invoke


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_eager_and_serves(trained_run, samples, tmp_path, fmt):
    variant = export(trained_run.artifact, fmt, tmp_path / f"model-{fmt}.tar.gz")
    photos = sorted(samples.glob("*.jpg"))
    eager = dict(predict_files(load_artifact(trained_run.artifact), photos, Options(topk=4)))
    exported = dict(predict_files(load_artifact(variant, backend=fmt), photos, Options(topk=4)))
    original = load_artifact(trained_run.artifact)
    rejection = original.rejection
    assert load_artifact(variant, backend=fmt).temperature == original.temperature != 1.0  # the fitted temperature
    assert rejection is not None and rejection["score"] == "mahalanobis"
    for photo in photos:  # fp32 on real photos: the same answer within 1e-4, calibration and rejection included
        ours, theirs = exported[photo], eager[photo]
        assert ours["topk_labels"] == theirs["topk_labels"]
        assert ours["topk_probs"] == pytest.approx(theirs["topk_probs"], abs=1e-4)
        assert ours["ood_score"] == pytest.approx(theirs["ood_score"], rel=1e-4, abs=1e-3)
        near_a_threshold = (abs(theirs["ood_score"] - rejection["threshold"]) < 1e-3 * max(1, abs(rejection["threshold"]))
                            or abs(theirs["topk_probs"][0] - Options().threshold) < 1e-4)
        if not near_a_threshold:  # on a threshold, a last-digit difference may tip the verdict either way
            assert ours["verdict"] == theirs["verdict"], photo
    with running_server(variant, "--backend", fmt) as url:
        answer = json.loads(invoke(url, photos[0].read_bytes())[2])
        assert answer["topk_labels"] == eager[photos[0]]["topk_labels"]


def test_export_takes_an_unpacked_artifact_quietly(trained_run, samples, tmp_path, capsys):
    safe_extract_tar(trained_run.artifact, tmp_path / "u")
    assert main(["export", str(tmp_path / "u")]) == 0
    assert "Warning" not in capsys.readouterr().err  # torch's deprecation notices are not the user's business
    exported = load_artifact(tmp_path / "u-torchscript.tar.gz", backend="torchscript")
    assert isinstance(exported.model, torch.jit.ScriptModule)
    photo = [samples / "Boxer_02426.jpg"]
    (_, ours), = predict_files(exported, photo)
    (_, eager), = predict_files(load_artifact(trained_run.artifact), photo)
    assert ours["topk_labels"] == eager["topk_labels"]


def test_export_never_overwrites_its_input_nor_stacks_suffixes(trained_run, tmp_path):
    artifact = Path(shutil.copy(trained_run.artifact, tmp_path / "model.tar.gz"))
    before = artifact.read_bytes()
    one_line_error(run_cli("export", str(artifact), "--out", str(artifact)), "is the artifact being exported")
    assert artifact.read_bytes() == before
    first = run_cli("export", str(artifact))
    assert first.returncode == 0 and (tmp_path / "model-torchscript.tar.gz").is_file(), first.stderr
    again = run_cli("export", str(tmp_path / "model-torchscript.tar.gz"), "--format", "onnx")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "model-onnx.tar.gz").is_file() and not list(tmp_path.glob("*-torchscript-*"))


def test_export_refuses_data_with_breeds_the_model_does_not_know_as_evaluate_does(trained_run, data_copy, tmp_path,
                                                                                  capsys):
    for split in ("train", "valid", "test"):  # one breed renamed: a data set of another problem
        (data_copy / split / "004.Akita").rename(data_copy / split / "099.Unknown_breed")
    out = tmp_path / "exported.tar.gz"
    assert main(["export", str(trained_run.artifact), "--data", str(data_copy), "--out", str(out)]) == 1
    refused = capsys.readouterr().err.strip()
    assert refused == (f"error: {data_copy} has breeds the model does not know (099.Unknown_breed); use data with the "
                       f"model's classes (its labels.json)")
    assert not out.exists() and not list(tmp_path.glob(".exported*"))  # nothing written, not even half
    assert main(["evaluate", "--model", str(trained_run.artifact), "--data", str(data_copy),
                 "--out", str(tmp_path / "ev")]) == 1
    assert capsys.readouterr().err.strip() == refused  # the same check, word for word
