"""Checkpoints, the one module that writes and reads them, and resuming a run from them.

    checkpoints/last.pt   every epoch: model, optimizer, schedule, batch order, FitState, config
    checkpoints/best.pt   whenever val_loss improves: model, epoch, config

Both are written atomically (a kill never leaves half a file) and read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dogbreed import config as cfgmod
from dogbreed.config import PROFILE_KEYS, TrainConfig
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_torch_save
from dogbreed.runtime.loading import load_failure, read_tensors

log = logging.getLogger(__name__)

# What a resumed run may change; everything else must match the run it continues.
RESUME_OVERRIDABLE = {"epochs", "patience", "workers", "rank_timeout", "device", "data", "cache_dir", *PROFILE_KEYS}


@dataclass
class FitState:
    """Where the loop stands: everything, besides the tensors, that a resumed run continues from."""

    epoch: int = 0  # last finished epoch
    history: list[dict] | None = None
    best_epoch: int = 0
    best_val_loss: float = math.inf

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "history": self.history or [], "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss}


class Checkpoints:
    """A run's ``checkpoints/`` folder. ``config`` (the run's resolved config) goes into each file,
    so a checkpoint alone says how to rebuild its model."""

    def __init__(self, folder: str | os.PathLike, config: dict):
        self.folder, self.config = Path(folder), config
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: FitState,
             shuffle: torch.Generator | None, *, improved: bool) -> None:
        """After an epoch; ``improved``: it has the best val_loss so far (it becomes best.pt too)."""
        weights = model.state_dict()
        if improved:
            atomic_torch_save({"config": self.config, "epoch": state.epoch, "model": weights}, self.best)
        atomic_torch_save({"config": self.config, "model": weights, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "state": state.to_dict(),
                           "shuffle": shuffle.get_state() if shuffle is not None else None}, self.last)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                shuffle: torch.Generator | None) -> FitState:
        """Load last.pt into the run's freshly built objects; returns where the loop stood."""
        try:
            ckpt = read_tensors(self.last)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            # The schedule's length follows --epochs, which a resume may change: set the lr for this step.
            for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * fn(scheduler.last_epoch)
            if ckpt.get("shuffle") is not None and shuffle is not None:
                shuffle.set_state(ckpt["shuffle"])
            state = FitState(**ckpt["state"])
        except FileNotFoundError:
            raise DogbreedError(f"{self.folder.parent} has no checkpoint to resume from (checkpoints/last.pt)") from None
        except Exception as exc:
            raise DogbreedError(f"checkpoint {self.last} is corrupt or does not match this run ({load_failure(exc)})") from None
        log.info("resuming %s after epoch %d", self.folder.parent, state.epoch)
        return state

    def load_best(self, model: nn.Module) -> int:
        """The best epoch's weights into ``model``; returns that epoch."""
        best = read_tensors(self.best)
        model.load_state_dict(best["model"])
        return best["epoch"]


def resume_config(run_dir: str | os.PathLike, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir``, with only the settings a resume may change."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DogbreedError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `dogbreed train` created")
    fixed = set(overrides) - RESUME_OVERRIDABLE
    if fixed:
        raise DogbreedError(
            f"--resume continues {run_dir} with its saved config; {', '.join(sorted(fixed))} cannot change "
            f"(only {', '.join(sorted(RESUME_OVERRIDABLE))} can)"
        )
    return cfgmod.resolve(run_dir / "config.yaml", overrides)


def check_resumable(run_dir: Path, epochs: int) -> None:
    """Refuse, before touching the run, a resume of ``epochs`` in all with nothing left to do."""
    results = run_dir / "results.json"
    if results.is_file():
        done = json.loads(results.read_text(encoding="utf-8")).get("epochs_run", 0)
        if epochs <= done:
            raise DogbreedError(f"{run_dir} has finished ({done} epochs; its artifact is {run_dir / 'model.tar.gz'}); "
                                f"to train it further, pass --epochs N with N over {done}")
