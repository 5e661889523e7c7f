"""Search spaces: any TrainConfig field as a float (log or linear), int or categorical range.

    lr:         {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    batch_size: {type: int, low: 8, high: 32}
    backbone:   {type: categorical, choices: [resnet18, resnet50]}
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from dogbreed import remote
from dogbreed.config import FIELD_TYPES, PROFILE_KEYS, TrainConfig, coerce
from dogbreed.errors import DogbreedError

NOT_TUNABLE = {"data", "out", "name", "cache_dir", "device", "workers", "resume", *PROFILE_KEYS}
KINDS = ("float", "int", "categorical")
KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def grid(self, points: int = 3) -> list:
        """Values for the grid sampler: the choices, or ``points`` values spread over the range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int" and self.step:
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        if self.step:  # a float range with a step: every step, as the sampler would draw them
            return [self.low + i * self.step for i in range(int((self.high - self.low) / self.step + 1e-9) + 1)]
        if self.log:
            values = [math.exp(math.log(self.low) + i * (math.log(self.high) - math.log(self.low)) / (points - 1)) for i in range(points)]
        else:
            values = [self.low + i * (self.high - self.low) / (points - 1) for i in range(points)]
        values[0], values[-1] = self.low, self.high  # exactly: exp(log(high)) may land just past it
        return sorted({round(v) for v in values}) if self.type == "int" else values


# The original project's search space: AMT's continuous lr (log scale here) and integer batch/epochs.
DEFAULT_SPACE = {
    "lr": Param("lr", "float", 1e-4, 1e-2, log=True),
    "batch_size": Param("batch_size", "int", 8, 32),
    "epochs": Param("epochs", "int", 3, 10),
}


def _param(name: str, spec: Any, where: str) -> Param:
    if name not in FIELD_TYPES:
        raise DogbreedError(f"{where}: unknown parameter {name!r}; tunable training options: "
                            f"{', '.join(k for k in FIELD_TYPES if k not in NOT_TUNABLE)}")
    if name in NOT_TUNABLE:
        raise DogbreedError(f"{where}: {name!r} is not a hyperparameter and cannot be tuned")
    if not isinstance(spec, dict):
        raise DogbreedError(f"{where}: {name} must be a mapping like {{type: float, low: 0.1, high: 1}}")
    unknown = set(spec) - KEYS
    if unknown:
        raise DogbreedError(f"{where}: {name} has unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(KEYS))}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise DogbreedError(f"{where}: {name} type must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise DogbreedError(f"{where}: {name} needs a non-empty list of choices")
        return Param(name, kind, choices=tuple(coerce(name, c) for c in choices))
    field_kind = FIELD_TYPES[name]
    if kind == "float" and not field_kind.startswith("float"):
        raise DogbreedError(f"{where}: {name} is {field_kind}, not a float")
    if kind == "int" and not field_kind.startswith("int"):
        raise DogbreedError(f"{where}: {name} is {field_kind}, not an int")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise DogbreedError(f"{where}: {name} needs numeric low and high") from None
    log = bool(spec.get("log", False))
    if not low < high:
        raise DogbreedError(f"{where}: {name} range is empty: low {low:g} must be below high {high:g}")
    if log and low <= 0:
        raise DogbreedError(f"{where}: {name} has log: true, so low must be positive (got {low:g})")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise DogbreedError(f"{where}: {name} is an int range; low and high must be whole numbers")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise DogbreedError(f"{where}: {name} step must be a positive number, got {step!r}")
        if log:
            raise DogbreedError(f"{where}: {name} has both log: true and a step; use one or the other")
        if kind == "int" and step != int(step):
            raise DogbreedError(f"{where}: {name} is an int range; its step must be a whole number, got {step!r}")
    try:
        coerce(name, low if kind == "float" else int(low))
    except DogbreedError as exc:
        raise DogbreedError(f"{where}: {exc}") from None
    return Param(name, kind, low, high, log=log, step=float(step) if step is not None else None)


def load_space(path: str | os.PathLike | None) -> dict[str, Param]:
    if path is None:
        return dict(DEFAULT_SPACE)
    doc = remote.read_yaml(path, "space file")
    if not isinstance(doc, dict) or not doc:
        raise DogbreedError(f"space file {path} must map parameter names to ranges")
    return {name: _param(name, spec, str(path)) for name, spec in doc.items()}


def space_to_dict(space: dict[str, Param]) -> dict:
    return {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items() if k != "name" and v is not None}
            for name, p in sorted(space.items())}


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[name] = trial.suggest_categorical(name, list(p.choices))
    return values


def check_space(space: dict[str, Param], base: TrainConfig, where: str | None) -> None:
    """Every choice and both ends of every range make a valid training configuration (else every
    trial would fail, one by one, after the study was made)."""
    for name, p in space.items():
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            value = int(value) if p.type == "int" else value
            try:
                dataclasses.replace(base, **{name: value}).validate()
            except DogbreedError as exc:
                raise DogbreedError(f"{where or 'search space'}: {name} = {value!r} is not usable ({exc})") from None
