"""model.tar.gz: SageMaker's layout, what model.json holds, and one-line errors for damaged artifacts."""

import json
import logging
import re
import tarfile

import pytest
import torch
from torchvision import models

from dogbreed import gates
from dogbreed.archive import safe_extract_tar
from dogbreed.artifact import load_artifact
from dogbreed.errors import DogbreedError
from dogbreed.runtime import backends, loading
from dogbreed.runtime.loading import ModelLoadError


def test_artifact_has_sagemakers_pytorch_layout(trained_run):
    with tarfile.open(trained_run.artifact) as tar:
        names = sorted(tar.getnames())
    assert names == ["MODEL_CARD.md", "baseline", "baseline/constraints.json", "baseline/sketch.npz",
                     "baseline/statistics.json", "code", "code/backends.py", "code/explain.py", "code/fusion.py", "code/inference.py", "code/loading.py", "code/network.py",
                     "code/pipeline.py", "code/presets.py", "code/requirements.txt", "code/scores.py", "labels.json",
                     "model.json", "model.pth", "rejection.pth"]


def test_the_code_folder_is_the_packages_runtime_verbatim(trained_run, tmp_path):
    from dogbreed.artifact import CODE_FILES, RUNTIME_DIR

    safe_extract_tar(trained_run.artifact, tmp_path)
    assert sorted(CODE_FILES) == sorted(p.name for p in RUNTIME_DIR.glob("*.py") if p.name != "__init__.py")
    for name in CODE_FILES:
        assert (tmp_path / "code" / name).read_bytes() == (RUNTIME_DIR / name).read_bytes()


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


def test_corrupt_artifact_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DogbreedError, match="not a readable tar.gz archive"):
        load_artifact(bad)


@pytest.mark.parametrize("content", [b"broken", b"some notes\nline two\n", bytes(range(256)) * 8],
                         ids=["short", "text", "random"])
def test_artifact_with_garbage_weights_says_so(trained_run, tmp_path, content):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    (tmp_path / "x" / "model.pth").write_bytes(content)
    with pytest.raises(DogbreedError) as caught:
        load_artifact(tmp_path / "x")
    assert str(caught.value).endswith("model.pth is unreadable (it is not a PyTorch weights file, or a damaged one)")


def test_weights_of_another_network_do_not_match(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    torch.save(models.get_model("resnet18", num_classes=7).state_dict(), tmp_path / "x" / "model.pth")
    with pytest.raises(DogbreedError, match="model.pth does not match model.json .*size mismatch for fc.weight"):
        load_artifact(tmp_path / "x")


@pytest.mark.parametrize("damage, match", [
    (lambda meta: meta.pop("preset"), "model.json or labels.json is malformed"),
    (lambda meta: meta["preset"].update(sharpen=2), "model.json or labels.json is malformed"),
    (lambda meta: meta.update(preset="fast"), "model.json or labels.json is malformed"),
    (lambda meta: meta.update(format_version=99), "the artifact has format 99, newer than this code reads .1.; upgrade"),
    (lambda meta: meta.update(threshold=1.5), r"model.json: threshold must be in \[0, 1\], got 1.5"),
    (lambda meta: meta.update(topk="many"), "model.json: invalid literal"),
    (lambda meta: meta.update(backbone="vgg"), "unknown backbone 'vgg'; valid backbones: "),
])
def test_artifact_with_a_damaged_model_json(trained_run, tmp_path, damage, match):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    path = tmp_path / "x" / "model.json"
    meta = json.loads(path.read_text())
    damage(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(DogbreedError, match=f"^cannot load model {re.escape(str(tmp_path / 'x'))}: {match}"):
        load_artifact(tmp_path / "x")


def test_an_unpacked_artifact_loads_as_the_tarball_does(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    packed, unpacked = load_artifact(trained_run.artifact), load_artifact(tmp_path / "x")
    assert (packed.labels, packed.display, packed.preset, packed.meta) == (unpacked.labels, unpacked.display,
                                                                           unpacked.preset, unpacked.meta)
    assert packed.labels == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier", "004.Akita"]
    for (name, a), (_, b) in zip(packed.model.state_dict().items(), unpacked.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not packed.model.training


def test_artifact_with_a_corrupt_torchscript_export(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    (tmp_path / "x" / "model.pt").write_bytes(b"broken")
    with pytest.raises(DogbreedError, match="model.pt is corrupt"):
        load_artifact(tmp_path / "x", backend="torchscript")


def test_pickled_code_in_model_pth_is_never_run(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    torch.save({"evil": print}, tmp_path / "x" / "model.pth")
    with pytest.raises(DogbreedError, match="model.pth is unreadable") as caught:
        load_artifact(tmp_path / "x")
    message = str(caught.value)  # no advice to load it unsafely, and the folder named once
    assert "pickled objects, not just tensors" in message and "weights_only" not in message
    assert message.count(str(tmp_path / "x")) == 1


def test_errors_name_the_artifact_not_the_folder_it_was_unpacked_into(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    (tmp_path / "x" / "model.pth").write_bytes(b"not tensors")
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(damaged, "w:gz") as tar:
        for path in sorted((tmp_path / "x").iterdir()):
            tar.add(path, arcname=path.name)
    with pytest.raises(DogbreedError) as caught:
        load_artifact(damaged)
    assert str(caught.value).startswith(f"cannot load model {damaged}: model.pth is unreadable")


def test_labels_that_skip_an_index_name_the_artifact(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path / "x")
    path = tmp_path / "x" / "labels.json"
    doc = json.loads(path.read_text())
    doc["classes"][0]["index"] = 99
    path.write_text(json.dumps(doc))
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(damaged, "w:gz") as tar:
        for file in sorted((tmp_path / "x").iterdir()):
            tar.add(file, arcname=file.name)
    with pytest.raises(DogbreedError) as caught:
        load_artifact(damaged)
    assert str(caught.value) == f"cannot load model {damaged}: labels.json: class indices are not 0..3"
    with pytest.raises(ModelLoadError) as caught:  # what the runtime raises: the folder and the reason apart
        loading.load_model_dir(str(tmp_path / "x"))
    assert (caught.value.path, caught.value.reason) == (str(tmp_path / "x"), "labels.json: class indices are not 0..3")


def test_a_forced_backend_that_cannot_run_is_one_warning_and_the_model_still_loads(trained_run, caplog):
    with caplog.at_level(logging.WARNING, logger="dogbreed.artifact"):
        model = load_artifact(trained_run.artifact, backend="onnx", budget_s=0.1)
    assert [r.getMessage() for r in caplog.records] == [
        f"{trained_run.artifact}: backend onnx cannot run this model: not exported; the fastest of the others is used"]
    assert model.selection.skipped["onnx"] == "not exported"
    assert model.backend == model.selection.chosen in ("eager", "bf16")  # bf16 where the run's end checked it
    assert model.selection.line().startswith(f"backend {model.backend} (asked for onnx); ")


def test_the_artifact_a_run_writes_serves_on_bf16_where_it_passed_its_gate(trained_run, tmp_path):
    safe_extract_tar(trained_run.artifact, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    results = json.loads((trained_run.run_dir / "results.json").read_text())
    model, selection = backends.select(str(tmp_path), "auto", "cpu", budget_s=120)  # time enough for both
    if not backends.native_bf16(torch.device("cpu")):  # nothing to check: auto does not time bf16 here
        assert "backends" not in meta and "bf16" in selection.skipped
        return
    record = meta["backends"]["bf16"]
    assert record["images"] == 8 and set(record) == {"top1", "top5", "images", "passed"}  # the valid split, 4 x 2
    assert results["backends"] == meta["backends"] and meta["gate"] == backends.GATE
    assert ("bf16" in selection.measured) == record["passed"] == ("bf16" not in selection.skipped)


def test_the_run_ends_check_spreads_its_images_over_the_split():
    assert gates.spread(list(range(10)), 20) == list(range(10))
    picked = gates.spread(list(range(1000)), 200)
    assert len(picked) == 200 and picked[:3] == [0, 5, 10] and picked[-1] == 995


def test_the_artifacts_requirements_are_the_packages_own_pins():
    import tomllib
    from pathlib import Path

    from dogbreed.artifact import REQUIREMENTS

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = {d.split(">=")[0].split("[")[0]: d for d in pyproject["project"]["dependencies"]}
    for line in REQUIREMENTS.split():
        assert pins[line.split(">=")[0]] == line  # inference.py needs what dogbreed itself was tested with
