"""What the training loop and the embedding pass tell whoever watches them (the profiler,
``dogbreed.monitor.Monitor``), and the watcher that does nothing, for runs that are not profiled.

The loops only know :class:`StepHooks`; the run (``dogbreed.run``) also describes itself through
the rest of :class:`NoHooks`' methods. Keeping the loops on this small protocol keeps the profiler's
machinery (sampler, rules, report) out of ``train`` and ``features``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn


class StepHooks(Protocol):
    """Called by the loops: time each step, read the loss and gradients, and ask whether a rule
    with the stop action has fired (training then ends after the current step)."""

    stop_requested: bool
    stopped_by: str | None

    def steps(self, batches: Iterable, phase: str) -> Iterable: ...
    def describe_loader(self, phase: str, loader, in_process: str | None = None) -> None: ...
    def after_backward(self, loss: torch.Tensor) -> None: ...
    def after_step(self) -> None: ...
    def epoch_begin(self, epoch: int) -> None: ...
    def epoch_end(self, row: dict) -> None: ...


class NoHooks:
    """Every hook does nothing: what an unprofiled run (or a tuning trial) runs with."""

    stop_requested = False
    stopped_by: str | None = None

    def steps(self, batches: Iterable, phase: str) -> Iterable:
        return batches

    def describe_loader(self, phase: str, loader, in_process: str | None = None) -> None: ...
    def after_backward(self, loss: torch.Tensor) -> None: ...
    def after_step(self) -> None: ...
    def epoch_begin(self, epoch: int) -> None: ...
    def epoch_end(self, row: dict) -> None: ...
    # the run's own calls
    def describe_data(self, classes: list[str], train_counts: list[int]) -> None: ...
    def watch(self, module: nn.Module, prefix: str = "", start_step: int = 0) -> None: ...
    def note(self, event: dict) -> None: ...
    def close(self, status: str = "completed") -> None: ...


NO_HOOKS = NoHooks()
