"""The command as users meet it: help texts, and one clear line with exit 1 for bad input."""

import ast
import shutil
from dataclasses import fields
from pathlib import Path

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


# Each command and the test files that run it. A command the parser gains fails
# test_every_command_is_tested until it is run by a test file named here.
COMMAND_TESTS = {
    "data fetch": ["data/test_fetch.py"],
    "data synth": ["data/test_synth.py", "test_cli.py"],
    "data check": ["test_cli.py", "test_s3.py"],
    "train": ["test_run.py", "test_cli.py", "test_s3.py", "test_torchrun.py"],
    "tune": ["tune/test_tuner.py", "test_cli.py"],
    "tune show": ["tune/test_tuner.py"],
    "report": ["monitor/test_monitor.py"],
    "predict": ["test_predict.py", "test_s3.py"],
    "serve": ["serve/test_main.py", "serve/test_config.py"],
    "export": ["test_export.py", "test_backends.py"],
    "evaluate": ["test_evaluate.py"],
    "explain": ["runtime/test_explain.py"],
    "transform": ["transform/test_transform.py", "transform/test_ray.py", "serve/test_parity.py", "test_s3.py"],
    "monitor baseline": ["drift/test_execute.py"],
    "monitor run": ["drift/test_execute.py"],
    "register": ["test_registry.py"],
    "demo": ["test_demo.py"],
}


def _command_lines(path):
    """The string words that start each argument list in a test file: ``main(["tune", "show", ...])``,
    ``run_cli("train", ...)``, ``cli(env, tmp_path, "predict", ...)``, ``[sys.executable, "-m",
    "dogbreed", "serve", ...]``; None stands for an argument that is not a literal string."""
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else node.args if isinstance(node, ast.Call) else []
        words = [n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else None for n in items]
        starts = [i + 2 for i in range(len(words) - 1) if words[i:i + 2] == ["-m", "dogbreed"]]
        start = starts[0] if starts else next((i for i, w in enumerate(words) if w is not None), len(words))
        yield words[start:]


def _runs(path, command: list[str], subcommands: set[str]) -> bool:
    """Whether the test file runs ``dogbreed COMMAND ...``: the command's words, then its arguments (a
    flag or a value computed in the test; a tuple of plain words such as ("train", "valid") is not a
    command line), and neither one of its subcommands nor --help."""
    for words in _command_lines(path):
        rest = words[len(command):]
        if (words[:len(command)] == command and rest and rest[0] not in subcommands | {"--help"}
                and any(w is None or w.startswith("-") for w in rest)):
            return True
    return False


def test_every_command_is_tested():
    parser = build_parser()
    commands = {}
    for words in SUBCOMMANDS:
        sub = parser
        for word in words:
            sub = sub._subparsers._group_actions[0].choices[word]
        if sub._subparsers is None or sub.get_default("func"):  # "tune" runs too; "data" alone is only a group
            commands[" ".join(words)] = {w[-1] for w in SUBCOMMANDS if w[:-1] == words}
    assert set(COMMAND_TESTS) == set(commands), "each command needs its test files in COMMAND_TESTS"
    here = Path(__file__).parent
    for command, files in COMMAND_TESTS.items():
        for name in files:
            assert _runs(here / name, command.split(), commands[command]), f"{name} never runs `dogbreed {command}`"


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
