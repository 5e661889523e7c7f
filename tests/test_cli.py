"""The command as users meet it: help texts, and one clear line with exit 1 for bad input."""

import shutil
from dataclasses import fields

import pytest

from dogbreed.cli import build_parser, main, run
from dogbreed.config import TrainConfig
from dogbreed.runtime.network import BACKBONES

from .conftest import free_port, one_line_error, run_cli


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


TRAIN = ["train", "--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--workers", "0", "--epochs", "1", "--no-progress"]


def test_missing_data_dir(tmp_path):
    one_line_error(run_cli(*TRAIN, "--data", str(tmp_path / "nope"), "--out", str(tmp_path)), "does not exist", "data synth")


def test_no_data_given(tmp_path):
    one_line_error(run_cli(*TRAIN, "--out", str(tmp_path)), "no data set given; pass --data DIR")


def test_class_sets_differ(data_copy, tmp_path):
    shutil.rmtree(data_copy / "test" / "003.Airedale_terrier")
    one_line_error(run_cli(*TRAIN, "--data", str(data_copy), "--out", str(tmp_path)),
                    "test/ is missing 003.Airedale_terrier")
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == [data_copy]  # nothing half-written


def test_unknown_backbone_lists_valid_ones(synth_data, tmp_path):
    one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path), "--backbone", "vgg16"),
                    f"backbone 'vgg16' is not valid; choose one of: {', '.join(BACKBONES)}")


def test_unknown_config_key(synth_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nbatchsize: 8\n")
    one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--config", str(recipe)), "unknown config key 'batchsize'")


def test_offline_pretrained_weights(synth_data, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path), "--backbone", "resnet18", "--no-progress",
                   env={"https_proxy": closed, "HTTPS_PROXY": closed})
    one_line_error(proc, "cannot download ResNet18_Weights.IMAGENET1K_V1", "--weights PATH", "--no-pretrained")


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
    one_line_error(run_cli("predict", str(samples / "Boxer_02426.jpg"), "--model", str(bad)), "not a readable tar.gz archive")


def test_a_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert main(["data", "synth", str(tmp_path / "notes.txt" / "sub"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Not a directory" in err and err.count("\n") == 0


@pytest.mark.parametrize("device", ["banana", "cuda:x", "meta"])
def test_a_bad_device_is_one_line_before_anything_starts(synth_data, tmp_path, device):
    one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--device", device),
                    f"device {device!r}")
    assert not (tmp_path / "runs").exists()
    proc = run_cli("tune", "--data", str(synth_data), "--out", str(tmp_path / "tuning"), "--device", device,
                   "--backbone", "resnet18", "--no-pretrained", "--no-progress")
    one_line_error(proc, f"device {device!r}")
    assert not (tmp_path / "tuning").exists()  # no study database, no waiting trials


def test_paths_that_are_files_and_names_that_escape_are_one_line(synth_data, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a file")
    one_line_error(run_cli(*TRAIN, "--data", str(notes), "--out", str(tmp_path / "runs")),
                    f"data dir {notes} is a file, not a folder")
    check = run_cli("data", "check", str(notes))  # data check ends its list of errors with their count
    assert check.returncode == 1 and f"error: data dir {notes} is a file, not a folder" in check.stderr
    one_line_error(run_cli("report", str(notes)), f"run folder {notes} is a file, not a folder")
    one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(notes / "runs")),
                    f"--out {notes / 'runs'}: {notes} is a file, not a folder; pass a folder")
    one_line_error(run_cli(*TRAIN, "--data", str(synth_data), "--out", str(tmp_path / "runs"), "--name", "../escape"),
                    "name '../escape' must be a plain folder name")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "runs").exists()


def test_run_returns_the_error_that_main_prints(capsys):
    """What the SageMaker entry reads its failure reason from: no parsing of what was printed."""
    reason = "name a run folder: dogbreed report runs/<run> (or --list-rules)"
    assert run(["report"]) == (1, reason)
    assert capsys.readouterr().err == ""
    assert main(["report"]) == 1
    assert capsys.readouterr().err == f"error: {reason}\n"
