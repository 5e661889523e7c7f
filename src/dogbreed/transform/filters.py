"""Batch Transform's DataProcessing on JSON records: ``InputFilter`` picks what the model gets,
``JoinSource=Input`` adds the answer to the input record (as ``SageMakerOutput`` in an object,
appended to an array), ``OutputFilter`` picks what is written.

The expressions are the JSONPath subset SageMaker documents for these fields: ``$``, ``.name``,
``['name']``, ``['a','b']`` (an object of those keys), ``[0]``, ``[0,2]``, ``[1:]``, ``[*]``.
Written here rather than taken from a JSONPath package because SageMaker's semantics differ from
general JSONPath where it matters: a selection of several keys is one object (not a list of
matches), and a missing key is an error for that record (not an empty match).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

OUTPUT_KEY = "SageMakerOutput"
_STEP = re.compile(r"""\.(?P<name>[A-Za-z_][\w-]*)|\[(?P<inner>[^\]]*)\]""")


class FilterError(ValueError):
    """A record the expression does not fit (a missing key, an index out of range)."""


@dataclass(frozen=True)
class Selector:
    text: str
    steps: tuple[Callable[[object], object], ...]

    def __call__(self, value):
        for step in self.steps:
            value = step(value)
        return value

    @property
    def identity(self) -> bool:
        return not self.steps


def compile_path(text: str, flag: str) -> Selector:
    """``text`` as a selector; a malformed expression is a ValueError naming ``flag``."""
    text = text.strip()
    if not text.startswith("$"):
        raise ValueError(f"{flag} {text!r} must start with $ (JSONPath), e.g. $ or $.image or $['id','{OUTPUT_KEY}']")
    steps, at = [], 1
    while at < len(text):
        match = _STEP.match(text, at)
        if not match:
            raise ValueError(f"{flag} {text!r}: cannot read it from {text[at:]!r}; supported: .name, ['a','b'], [0], [1:], [*]")
        steps.append(_name(match["name"]) if match["name"] else _bracket(match["inner"], text, flag))
        at = match.end()
    return Selector(text, tuple(steps))


def _name(name: str) -> Callable:
    def step(value):
        if not isinstance(value, dict) or name not in value:
            raise FilterError(f"no key {name!r}")
        return value[name]
    return step


def _bracket(inner: str, text: str, flag: str) -> Callable:
    inner = inner.strip()
    if inner == "*":
        return lambda value: value
    parts = [p.strip() for p in inner.split(",")]
    if all(len(p) >= 2 and p[0] == p[-1] and p[0] in "'\"" for p in parts):
        keys = [p[1:-1] for p in parts]
        if len(keys) == 1:
            return _name(keys[0])

        def pick(value):
            if not isinstance(value, dict):
                raise FilterError(f"keys {keys} of a value that is not an object")
            missing = [k for k in keys if k not in value]
            if missing:
                raise FilterError(f"no key {missing[0]!r}")
            return {k: value[k] for k in keys}
        return pick
    if len(parts) == 1 and ":" in parts[0]:
        try:
            start, end = (int(x) if x.strip() else None for x in parts[0].split(":"))
        except ValueError:
            raise ValueError(f"{flag} {text!r}: [{inner}] is not a slice") from None
        return lambda value: _array(value)[start:end]
    try:
        indices = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: [{inner}] is neither quoted keys nor indices") from None

    def index(value):
        array = _array(value)
        try:
            picked = [array[i] for i in indices]
        except IndexError:
            raise FilterError(f"index out of range in [{inner}]") from None
        return picked[0] if len(picked) == 1 else picked
    return index


def _array(value) -> list:
    if not isinstance(value, list):
        raise FilterError("an index of a value that is not an array")
    return value


def join(record, answer):
    """``JoinSource=Input``: the answer added to the input record."""
    if isinstance(record, dict):
        return {**record, OUTPUT_KEY: answer}
    if isinstance(record, list):
        return [*record, answer]
    raise FilterError(f"--join-source Input needs JSON objects or arrays as records, not {type(record).__name__}")
