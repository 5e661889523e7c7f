"""Command-line flags generated from a settings dataclass (``TrainConfig``, ``ServeConfig``,
``TuneOptions``, ``PredictOptions``, ``ExportOptions``, ``SynthOptions``), so a setting is declared
once: its type, default, help and choices live on the field, and :func:`check_choices` holds it to
them."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any

from dogbreed.errors import DogbreedError


def option(default: Any = MISSING, help: str = "", **extra: Any) -> Any:
    """A dataclass field with its flag's help (and ``choices``, shown in the help)."""
    return field(default=default, metadata={"help": help, **extra})


def add_flags(group: argparse._ActionsContainer, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of ``cls``, its help ending with the default. A field
    without a default is a required flag. Flags not given stay absent from the namespace (see
    :func:`given`), so only what was typed overrides a recipe file or the dataclass defaults."""
    for f in fields(cls):
        if f.name in exclude or not f.metadata.get("flag", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        default = None if required else f.default
        help_text, notes = f.metadata["help"], []
        choices = f.metadata.get("choices")
        if choices and not all(str(c) in help_text for c in choices):
            notes.append(f"one of: {', '.join(map(str, choices))}")
        if not required and "default" not in help_text:  # a help that explains its own default says it better
            notes.append(f"default: {'none' if default is None else default}")
        help_text += f" ({'; '.join(notes)})" if notes else ""
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))  # "int", "float | None"
        if kind.startswith("bool"):  # a switch that is off unless typed needs no --no- form
            action = argparse.BooleanOptionalAction if default else "store_true"
            group.add_argument(flag, action=action, default=argparse.SUPPRESS, help=help_text)
            continue
        caster = int if kind.startswith("int") else float if kind.startswith("float") else str
        # Choices are checked by the dataclass's own validation, which names the bad value in one line.
        group.add_argument(flag, type=caster, default=argparse.SUPPRESS, required=required,
                           metavar=f.metadata.get("metavar", f.name.upper()), help=help_text)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given as flags."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def check_choices(settings: Any, *, as_flags: bool = False, verdict: str = "is not valid") -> None:
    """Every field declared with ``choices`` holds one of them; else one line naming the field (as
    its ``--flag`` with ``as_flags``), the value and the choices."""
    for f in fields(settings):
        choices = f.metadata.get("choices")
        value = getattr(settings, f.name)
        if choices and value not in choices:
            name = "--" + f.name.replace("_", "-") if as_flags else f.name
            raise DogbreedError(f"{name} {value!r} {verdict}; choose one of: {', '.join(map(str, choices))}")
