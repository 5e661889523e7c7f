"""Flags generated from a settings dataclass: one declaration per setting."""

import argparse
from dataclasses import dataclass

import pytest

from dogbreed.errors import DogbreedError
from dogbreed.flags import add_flags, check_choices, given, option


@dataclass
class Settings:
    path: str = option(help="where", metavar="PATH")
    size: int = option(3, "how many")
    rate: float | None = option(None, "how fast (default: as fast as it goes)")
    mode: str = option("a", "which", choices=("a", "b"))
    loud: bool = option(False, "say more")


def parser():
    p = argparse.ArgumentParser()
    add_flags(p, Settings)
    return p


def test_types_defaults_and_help_come_from_the_fields():
    p = parser()
    helps = {a.dest: a.help for a in p._actions}
    assert helps["size"] == "how many (default: 3)"
    assert helps["rate"] == "how fast (default: as fast as it goes)"  # a help that says its own default
    assert helps["mode"] == "which (one of: a, b; default: a)"
    args = p.parse_args(["--path", "x", "--size", "5", "--loud"])
    assert given(args, Settings) == {"path": "x", "size": 5, "loud": True}  # only what was typed
    assert Settings(**given(args, Settings)) == Settings("x", 5, None, "a", True)


def test_a_field_without_a_default_is_a_required_flag(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([])
    assert "the following arguments are required: --path" in capsys.readouterr().err


def test_a_switch_that_is_off_by_default_has_no_off_form(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--path", "x", "--no-loud"])
    assert "unrecognized arguments: --no-loud" in capsys.readouterr().err


def test_choices_are_checked_naming_the_field_or_its_flag():
    check_choices(Settings("x", mode="b"))
    with pytest.raises(DogbreedError, match=r"^mode 'c' is not valid; choose one of: a, b$"):
        check_choices(Settings("x", mode="c"))
    with pytest.raises(DogbreedError, match=r"^--mode 'c' is not available; choose one of: a, b$"):
        check_choices(Settings("x", mode="c"), as_flags=True, verdict="is not available")
