"""The rule set: SageMaker's profiler and Debugger rules, their parameters overridable in a YAML
file, run live during training and again over a finished run.

A rules file names rules and their parameters; ``action: stop`` ends training when the rule first
triggers (SageMaker's StopTraining action), ``off`` (or ``false``) disables a rule::

    StepOutlier: {stddev: 4, n_outliers: 5}
    Overfit: {action: stop}
    DeadRelu: off
"""

from __future__ import annotations

import os

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.monitor.rules.base import Rule, State
from dogbreed.monitor.rules.debugger import (
    ClassImbalance,
    DeadRelu,
    ExplodingTensor,
    LossNotDecreasing,
    Overfit,
    Overtraining,
    PoorWeightInitialization,
    VanishingGradient,
)
from dogbreed.monitor.rules.profiler import (
    BatchSize,
    CPUBottleneck,
    Dataloader,
    GPUMemoryIncrease,
    IOBottleneck,
    LoadBalancing,
    LowGPUUtilization,
    MaxInitializationTime,
    StepOutlier,
)
from dogbreed.monitor.rules.summary import OverallFrameworkMetrics, OverallSystemUsage

RULES: dict[str, type[Rule]] = {r.name: r for r in (
    LowGPUUtilization, BatchSize, CPUBottleneck, IOBottleneck, Dataloader, GPUMemoryIncrease, StepOutlier,
    LoadBalancing, MaxInitializationTime, OverallSystemUsage, OverallFrameworkMetrics,
    VanishingGradient, ExplodingTensor, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing,
    ClassImbalance, DeadRelu,
)}
ACTIONS = ("log", "stop")
ORDER = {State.TRIGGERED: 0, State.NO_ISSUES: 1, State.NO_DATA: 2, State.SUMMARY: 3, State.NOT_APPLICABLE: 4}


def _coerce(rule: str, key: str, value, default):
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if kind is float else (int(value) if float(value).is_integer() else float(value))
    raise DogbreedError(f"rules: {rule}.{key} expects {kind.__name__}, got {value!r}")


def validate_rules(doc, source: str = "rules file") -> dict[str, dict | None]:
    """``{rule: {params..., "action": ...}}`` with ``None`` for a disabled rule; errors name the bad key."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise DogbreedError(f"{source} must map rule names to parameters, e.g. `StepOutlier: {{stddev: 4}}`")
    out: dict[str, dict | None] = {}
    for rule, params in doc.items():
        if rule not in RULES:
            raise DogbreedError(f"{source}: unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
        if params in (False, "off"):
            out[rule] = None
            continue
        if params in (None, True, "on"):
            params = {}
        if not isinstance(params, dict):
            raise DogbreedError(f"{source}: {rule} takes a mapping of parameters, `off`, or nothing; got {params!r}")
        defaults = RULES[rule].defaults
        clean = {}
        for key, value in params.items():
            if key == "action":
                if value not in ACTIONS:
                    raise DogbreedError(f"{source}: {rule}.action {value!r} is not valid; choose one of: {', '.join(ACTIONS)}")
                clean[key] = value
            elif key not in defaults:
                valid = ", ".join([*defaults, "action"])
                raise DogbreedError(f"{source}: rule {rule} has no parameter {key!r}; its parameters: {valid}")
            else:
                clean[key] = _coerce(rule, key, value, defaults[key])
                valid = RULES[rule].choices.get(key)
                if valid and clean[key] not in valid:
                    raise DogbreedError(f"{source}: {rule}.{key} {value!r} is not valid; choose one of: {', '.join(valid)}")
        out[rule] = clean
    return out


def load_rules_file(path: str | os.PathLike | None) -> dict[str, dict | None]:
    if not path:
        return {}
    return validate_rules(remote.read_yaml(path, "rules file"), f"rules file {path}")


class RuleSet:
    """Every enabled rule, fed records stream by stream."""

    def __init__(self, meta: dict, settings: dict[str, dict | None] | None = None) -> None:
        settings = settings or {}
        self.rules: list[Rule] = []
        for name, cls in RULES.items():
            if name in settings and settings[name] is None:
                continue
            params = dict(settings.get(name) or {})
            action = params.pop("action", "log")
            self.rules.append(cls(meta, params, action))
        self.by_stream: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for stream in rule.streams:
                self.by_stream.setdefault(stream, []).append(rule)

    def feed(self, stream: str, records: list[dict]) -> list[Rule]:
        """Returns the rules that triggered for the first time."""
        fired = []
        for rule in self.by_stream.get(stream, ()):
            if rule.not_applicable():
                continue
            before = rule.triggers
            for record in records:
                if record.get("rank", 0) and not rule.all_ranks:  # another torchrun rank's record
                    continue
                rule.observe(stream, record)
            if rule.triggers and not before:
                fired.append(rule)
        return fired

    def finish(self) -> None:
        for rule in self.rules:
            rule.finish()

    def results(self) -> list[dict]:
        """Triggered rules first (most triggers first), then the rest, then those not applicable."""
        return sorted((r.result() for r in self.rules),
                      key=lambda r: (ORDER[r["status"].state], -r["triggers"], r["rule"]))
