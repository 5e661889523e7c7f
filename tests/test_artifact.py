import io
import json
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch
from torchvision import models

from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.errors import DogbreedError

from .conftest import run_cli


def test_artifact_has_sagemakers_pytorch_layout(trained_run):
    with tarfile.open(trained_run.artifact) as tar:
        names = sorted(tar.getnames())
    assert names == ["code", "code/inference.py", "code/network.py", "code/presets.py", "code/requirements.txt",
                     "labels.json", "model.json", "model.pth"]


def test_model_json_describes_how_to_rebuild_the_model(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["num_classes"] == 4 and meta["image_size"] == 64
    assert meta["preset"] == {"crop_size": 64, "resize_size": 73, "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
    assert meta["config"]["epochs"] == 4 and "test_accuracy" in meta["metrics"]
    # model.pth is a plain state dict that torchvision itself can load, no dogbreed needed
    net = models.get_model("resnet18", num_classes=4)
    net.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))


def test_inference_py_on_its_own_answers_like_dogbreed_predict(trained_run, samples, tmp_path):
    """Loaded as SageMaker's container loads it: code/ on sys.path, no dogbreed package imported."""
    safe_extract_tar(trained_run.artifact, tmp_path)
    photos = sorted(samples.glob("*.jpg"))[:5]
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path / "code")!r})
        import inference
        model = inference.model_fn({str(tmp_path)!r})
        answers = []
        for path in {[str(p) for p in photos]!r}:
            body = open(path, "rb").read()
            prediction = inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
            answers.append(json.loads(inference.output_fn(prediction, "application/json")))
        assert not [m for m in sys.modules if m.startswith("dogbreed")], "inference.py imported dogbreed"
        print(json.dumps(answers))
    """)
    standalone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert standalone.returncode == 0, standalone.stderr
    proc = run_cli("predict", *map(str, photos), "--model", str(trained_run.artifact), "--json")
    assert proc.returncode == 0, proc.stderr
    cli = [json.loads(line) for line in proc.stdout.splitlines()]
    for ours, theirs in zip(cli, json.loads(standalone.stdout), strict=True):
        assert ours.pop("file").endswith(".jpg")
        assert set(theirs) >= {"topk_labels", "topk_probs", "topk_indices"}
        # predict batches images, the handlers take one at a time: identical up to float rounding
        assert ours.pop("topk_probs") == pytest.approx(theirs.pop("topk_probs"), abs=1e-5)
        assert ours == theirs


def test_json_instances_give_a_list_in_order(trained_run, samples, tmp_path):
    import base64

    from dogbreed.runtime import inference

    safe_extract_tar(trained_run.artifact, tmp_path)
    model = inference.model_fn(str(tmp_path))
    photos = sorted(samples.glob("*.jpg"))[:3]
    body = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in photos]})
    many = json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(body, "application/json"), model)))
    singles = [json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(p.read_bytes(), "image/jpeg"), model)))
               for p in photos]
    assert [a["topk_labels"] for a in many] == [a["topk_labels"] for a in singles]
    for a, b in zip(many, singles):
        assert a["topk_probs"] == pytest.approx(b["topk_probs"], abs=1e-5)


@pytest.mark.parametrize("body, ctype, match", [
    (b"", "image/jpeg", "empty image body"),
    (b"GIF89a-not-really", "image/jpeg", "cannot decode"),
    (b"{}", "text/plain", "unsupported content type 'text/plain'"),
    (b"{not json", "application/json", "malformed JSON"),
    (b'{"instances": [{"b64": "***"}]}', "application/json", "malformed base64"),
])
def test_handlers_reject_bad_requests_with_a_reason(trained_run, tmp_path, body, ctype, match):
    from dogbreed.runtime import inference

    safe_extract_tar(trained_run.artifact, tmp_path)
    model = inference.model_fn(str(tmp_path))
    with pytest.raises(inference.InputError, match=match):
        inference.input_fn(body, ctype)
    assert model is not None


def test_corrupt_artifact_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DogbreedError, match="not a readable tar.gz archive"):
        load_artifact(bad)


def test_artifact_with_corrupt_weights(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    (tmp_path / "x" / "model.pth").write_bytes(b"broken")
    with pytest.raises(DogbreedError, match="model.pth is corrupt"):
        load_artifact(tmp_path / "x")


@pytest.mark.parametrize("damage, match", [
    (lambda meta: meta.pop("preset"), "model.json or labels.json is malformed"),
    (lambda meta: meta["preset"].update(sharpen=2), "model.json or labels.json is malformed"),
    (lambda meta: meta.update(preset="fast"), "model.json or labels.json is malformed"),
    (lambda meta: meta.update(format_version=99), "the artifact has format 99, newer than this code reads .1.; upgrade"),
])
def test_artifact_with_a_damaged_model_json(trained_run, tmp_path, damage, match):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    path = tmp_path / "x" / "model.json"
    meta = json.loads(path.read_text())
    damage(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(DogbreedError, match=match):
        load_artifact(tmp_path / "x")


def test_artifact_with_a_corrupt_torchscript_export(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    (tmp_path / "x" / "model.pt").write_bytes(b"broken")
    with pytest.raises(DogbreedError, match="model.pt is corrupt"):
        load_artifact(tmp_path / "x", backend="torchscript")


def test_pickled_code_in_model_pth_is_never_run(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    torch.save({"evil": print}, tmp_path / "x" / "model.pth")
    with pytest.raises(DogbreedError, match="model.pth is corrupt") as caught:
        load_artifact(tmp_path / "x")
    message = str(caught.value)  # no advice to load it unsafely, and the folder named once
    assert "pickled objects, not just tensors" in message and "weights_only" not in message
    assert message.count(str(tmp_path / "x")) == 1


def test_errors_name_the_artifact_not_the_folder_it_was_unpacked_into(trained_run):
    with pytest.raises(DogbreedError) as caught:
        load_artifact(trained_run.artifact, backend="onnx")
    assert str(caught.value).startswith(f"cannot load model {trained_run.artifact}: no model.onnx;")


@pytest.mark.parametrize("member", ["../escape.txt", "/abs.txt"])
def test_tar_with_paths_outside_the_target_is_refused(tmp_path, member):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DogbreedError, match="unsafe member path"):
        load_artifact(path)
    assert not (tmp_path / "escape.txt").exists()


def test_tar_with_a_symlink_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DogbreedError, match="links and special files are not allowed"):
        load_artifact(path)


def _zip(path, data: bytes) -> bytes:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/train/a.txt", data)
    return path.read_bytes()


def test_damaged_zip_data_is_one_clear_error(tmp_path):
    import random

    from dogbreed.archive import safe_extract_zip
    from dogbreed.errors import DogbreedError

    good = _zip(tmp_path / "good.zip", random.Random(0).randbytes(2000) * 4)
    start = good.index(b"a.txt") + len("a.txt")  # the compressed data follows the local header's name
    for offset in range(start, start + 40):
        damaged = bytearray(good)
        damaged[offset] ^= 0xFF
        (tmp_path / "bad.zip").write_bytes(bytes(damaged))
        with pytest.raises(DogbreedError, match="not a readable zip archive"):
            safe_extract_zip(tmp_path / "bad.zip", tmp_path / f"out-{offset}")


def test_encrypted_zip_is_one_clear_error(tmp_path):
    from dogbreed.archive import safe_extract_zip
    from dogbreed.errors import DogbreedError

    data = bytearray(_zip(tmp_path / "plain.zip", b"hello" * 100))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = data.index(signature) + flag_offset
        data[at] |= 0x01  # "encrypted"
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    with pytest.raises(DogbreedError, match="not a readable zip archive"):
        safe_extract_zip(tmp_path / "enc.zip", tmp_path / "out")


def test_the_artifacts_requirements_are_the_packages_own_pins():
    import tomllib
    from pathlib import Path

    from dogbreed.artifact import REQUIREMENTS

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = {d.split(">=")[0].split("[")[0]: d for d in pyproject["project"]["dependencies"]}
    for line in REQUIREMENTS.split():
        assert pins[line.split(">=")[0]] == line  # inference.py needs what dogbreed itself was tested with
