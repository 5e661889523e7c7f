"""What every rule shares: parameters with defaults, datapoints, triggers and its result file.

A rule sees records one at a time, in time order, from the streams it names, and decides on each
one. The same rule objects run live during training (fed every sampler tick) and over a finished
run (fed the recorded files), so the two agree.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

MAX_MESSAGES = 20  # trigger messages kept per rule (the count keeps going)


class State(enum.Enum):
    """Where a rule stands; the value is the word its result file and the report show."""

    TRIGGERED = "triggered"
    NO_ISSUES = "no issues found"
    NO_DATA = "no data"
    SUMMARY = "summary"
    NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class Status:
    """A rule's state and, for no data or not applicable, why."""

    state: State
    reason: str = ""

    def __str__(self) -> str:
        """As the rule's result file spells it: ``no data: <reason>``."""
        return f"{self.state.value}: {self.reason}" if self.reason else self.state.value


def num(value) -> float:
    """A recorded number; NaN and infinities were written as strings."""
    return float(value) if value is not None else math.nan


class Rule:
    name: ClassVar[str]
    kind: ClassVar[str]  # "profiler" or "debugger"
    description: ClassVar[str]
    recommendation: ClassVar[str]
    defaults: ClassVar[dict] = {}
    choices: ClassVar[dict[str, tuple]] = {}  # parameters that take one of a few words
    streams: ClassVar[tuple[str, ...]] = ()
    summary_only: ClassVar[bool] = False  # a summary never triggers
    # Whether the rule sees the other torchrun ranks' records too (they carry "rank"); the rest read
    # rank 0's machine only.
    all_ranks: ClassVar[bool] = False

    def __init__(self, meta: dict, params: dict | None = None, action: str = "log") -> None:
        self.meta = meta  # shared with the monitor, which fills it in as the run goes
        self.params = {**self.defaults, **(params or {})}
        self.action = action
        self.datapoints = 0
        self.evaluations = 0
        self.triggers = 0
        self.first: dict | None = None
        self.last: dict | None = None
        self.messages: list[dict] = []
        self.details: dict = {}

    # -- subclasses -------------------------------------------------------------------------------

    def not_applicable(self) -> str | None:
        """Why this rule cannot run on this run's hardware or network, or None when it can."""
        return None

    def observe(self, stream: str, record: dict) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The end of the run (or of the recorded files): final evaluation and summary details."""

    # -- shared -----------------------------------------------------------------------------------

    @property
    def gpus(self) -> list:
        return self.meta.get("hardware", {}).get("gpus", [])

    def no_gpu(self) -> str | None:
        return None if self.gpus else "no NVIDIA GPU on this machine"

    def check(self, condition: bool, record: dict, message: str) -> bool:
        """One evaluation; a trigger when ``condition`` holds."""
        self.evaluations += 1
        if condition:
            self.fire(record, message)
        return condition

    def fire(self, record: dict, message: str) -> None:
        self.triggers += 1
        where = {"t": record.get("t"), "step": record.get("step"), "epoch": record.get("epoch"), "message": message}
        self.first = self.first or where
        self.last = where
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(where)

    def status(self) -> Status:
        if reason := self.not_applicable():
            return Status(State.NOT_APPLICABLE, reason)
        if self.summary_only:
            return Status(State.SUMMARY)
        if self.triggers:
            return Status(State.TRIGGERED)
        if not self.evaluations:
            return Status(State.NO_DATA, self.details.get("waiting", "nothing to evaluate in this run"))
        return Status(State.NO_ISSUES)

    def result(self) -> dict:
        """Its result file's fields; ``status`` is a :class:`Status` (the file holds ``str(status)``)."""
        return {
            "rule": self.name, "kind": self.kind, "status": self.status(), "description": self.description,
            "recommendation": self.recommendation, "parameters": self.params, "action": self.action,
            "datapoints": self.datapoints, "evaluations": self.evaluations, "triggers": self.triggers,
            "first_trigger": self.first, "last_trigger": self.last, "messages": self.messages, "details": self.details,
        }


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile, as SageMaker's rules compute them (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))
