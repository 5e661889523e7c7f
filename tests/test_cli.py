"""The command as users meet it: help texts, and one clear line with exit 1 for bad input."""

import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from dogbreed.cli import build_parser, main
from dogbreed.config import TrainConfig
from dogbreed.runtime.network import BACKBONES

from .conftest import free_port, run_cli


def _commands(parser, words=()):
    """Every command and subcommand the parser knows, as the words that name it."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            yield [*words, name]
            yield from _commands(sub, (*words, name))


SUBCOMMANDS = list(_commands(build_parser()))


@pytest.mark.parametrize("words", [[], *SUBCOMMANDS])
def test_help_explains_every_flag_with_its_default(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dogbreed")
    sub = build_parser()
    for word in words:
        sub = sub._subparsers._group_actions[0].choices[word]
    for action in sub._actions:
        if action.option_strings and action.dest not in ("help", "version") and not action.required:
            assert "default" in (action.help or ""), f"{words} {action.option_strings} has no default in its help"


def test_every_command_is_tested():
    assert {" ".join(w) for w in SUBCOMMANDS} >= {"data fetch", "data synth", "data check", "train", "tune", "tune show",
                                                 "report", "predict", "serve", "export", "demo"}


def test_train_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out


def _one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


TRAIN = ["train", "--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--no-progress"]


def test_missing_data_dir(tmp_path):
    _one_line_error(run_cli(*TRAIN, "--data", str(tmp_path / "nope"), "--out", str(tmp_path)), "does not exist", "data synth")


def test_no_data_given(tmp_path):
    _one_line_error(run_cli(*TRAIN, "--out", str(tmp_path)), "no data set given; pass --data DIR")


def test_class_sets_differ(data_copy, tmp_path):
    shutil.rmtree(data_copy / "test" / "003.Airedale_terrier")
    _one_line_error(run_cli(*TRAIN, "--data", str(data_copy), "--out", str(tmp_path)),
                    "test/ is missing 003.Airedale_terrier")
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == [data_copy]  # nothing half-written


def test_unknown_backbone_lists_valid_ones(synth_data, tmp_path):
    _one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path), "--backbone", "vgg16"),
                    f"backbone 'vgg16' is not valid; choose one of: {', '.join(BACKBONES)}")


def test_unknown_config_key(synth_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nbatchsize: 8\n")
    _one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--config", str(recipe)), "unknown config key 'batchsize'")


def test_offline_pretrained_weights(synth_data, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path), "--backbone", "resnet18", "--no-progress",
                   env={"https_proxy": closed, "HTTPS_PROXY": closed})
    _one_line_error(proc, "cannot download ResNet18_Weights.IMAGENET1K_V1", "--weights PATH", "--no-pretrained")


def test_data_check_exit_codes(data_copy, capsys):
    assert main(["data", "check", str(data_copy), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    (data_copy / "valid" / "001.Affenpinscher" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert main(["data", "check", str(data_copy), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "unreadable image" in err and "bad.png" in err and "1 error(s)" in err


def test_data_check_of_a_missing_dir(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_artifact_in_predict(samples, tmp_path):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"nope")
    _one_line_error(run_cli("predict", str(samples / "Boxer_02426.jpg"), "--model", str(bad)), "not a readable tar.gz archive")


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "80"], "--threshold must be in [0, 1], got 80"),
    (["--topk", "1001"], "--topk must be 1..1000, got 1001"),
    (["--backend", "tensorrt"], "--backend 'tensorrt' is not available; choose one of: eager, torchscript, onnx"),
    (["--max-instances", "300"], "--max-instances 300 is over --queue-size 256: a request of that many images could "
                                 "never be queued; raise --queue-size or lower --max-instances"),
    (["--max-batch-size", "0"], "--max-batch-size must be at least 1"),
    (["--port", "99999"], "--port must be 0..65535 (0: any free port), got 99999"),
    (["--name", ""], "--name '' is not an endpoint name: 1 to 63 letters, digits and hyphens"),
    (["--name", "a/b"], "--name 'a/b' is not an endpoint name"),
    (["--host", "no.such.host.invalid"], "--host 'no.such.host.invalid' is not an address of this machine"),
    (["--max-body-mb", "0"], "--max-body-mb, --timeout-s and --max-pixels must be positive, --max-delay-ms at least 0"),
])
def test_serve_refuses_bad_settings_before_loading(tmp_path, capsys, flags, message):
    assert main(["serve", "--model", str(tmp_path / "model.tar.gz"), *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "missing.tar.gz"), "--port", str(port)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: port {port} on 127.0.0.1 is in use (another server?); pick another "
                                               f"--port, or --port 0 for any free one")


def test_export_takes_an_unpacked_artifact_quietly(trained_run, samples, tmp_path, capsys):
    from dogbreed.archive import safe_extract_tar
    from dogbreed.artifact import load_artifact
    from dogbreed.predict import predict_files

    safe_extract_tar(trained_run.artifact, tmp_path / "u")
    assert main(["export", str(tmp_path / "u")]) == 0
    assert "Warning" not in capsys.readouterr().err  # torch's deprecation notices are not the user's business
    exported = load_artifact(tmp_path / "u-torchscript.tar.gz", backend="torchscript")
    assert isinstance(exported.model, torch.jit.ScriptModule)
    photo = [samples / "Boxer_02426.jpg"]
    (_, ours), = predict_files(exported, photo)
    (_, eager), = predict_files(load_artifact(trained_run.artifact), photo)
    assert ours["topk_labels"] == eager["topk_labels"]


def test_a_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert main(["data", "synth", str(tmp_path / "notes.txt" / "sub"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Not a directory" in err and err.count("\n") == 0


@pytest.mark.parametrize("device", ["banana", "cuda:x", "meta"])
def test_a_bad_device_is_one_line_before_anything_starts(synth_data, tmp_path, device):
    _one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--device", device),
                    f"device {device!r}")
    assert not (tmp_path / "runs").exists()
    proc = run_cli("tune", "--data", str(synth_data), "--out", str(tmp_path / "tuning"), "--device", device,
                   "--backbone", "resnet18", "--no-pretrained", "--no-progress")
    _one_line_error(proc, f"device {device!r}")
    assert not (tmp_path / "tuning").exists()  # no study database, no waiting trials


def test_paths_that_are_files_and_names_that_escape_are_one_line(synth_data, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a file")
    _one_line_error(run_cli(*TRAIN, "--data", str(notes), "--out", str(tmp_path / "runs")),
                    f"data dir {notes} is a file, not a folder")
    check = run_cli("data", "check", str(notes))  # data check ends its list of errors with their count
    assert check.returncode == 1 and f"error: data dir {notes} is a file, not a folder" in check.stderr
    _one_line_error(run_cli("report", str(notes)), f"run folder {notes} is a file, not a folder")
    _one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(notes / "runs")),
                    f"--out {notes / 'runs'}: {notes} is a file, not a folder; pass a folder")
    _one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--name", "../escape"),
                    "name '../escape' must be a plain folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_export_never_overwrites_its_input_nor_stacks_suffixes(trained_run, tmp_path):
    artifact = Path(shutil.copy(trained_run.artifact, tmp_path / "model.tar.gz"))
    before = artifact.read_bytes()
    _one_line_error(run_cli("export", str(artifact), "--out", str(artifact)), "is the artifact being exported")
    assert artifact.read_bytes() == before
    first = run_cli("export", str(artifact))
    assert first.returncode == 0 and (tmp_path / "model-torchscript.tar.gz").is_file(), first.stderr
    again = run_cli("export", str(tmp_path / "model-torchscript.tar.gz"), "--format", "onnx")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "model-onnx.tar.gz").is_file() and not list(tmp_path.glob("*-torchscript-*"))
