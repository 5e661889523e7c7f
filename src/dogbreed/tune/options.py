"""The search's own settings, in a module light enough for the CLI to build its flags from."""

from __future__ import annotations

from dataclasses import dataclass

from dogbreed.errors import DogbreedError
from dogbreed.flags import check_choices, option

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = {"val_loss": "minimize", "val_accuracy": "maximize"}


@dataclass
class TuneOptions:
    """The search's own settings (the flags are generated from these fields); TrainConfig sets
    everything the search space does not."""

    trials: int = option(8, "trials in the study, over all workers")
    parallel: int = option(2, "local worker processes")
    study: str = option("dogbreed", "study name; rerunning the same command resumes it")
    storage: str | None = option(None, "SQLAlchemy URL shared by all workers, e.g. postgresql://user:pw@host/db "
                                       "(default: sqlite file OUT/tune.db)", metavar="URL")
    space: str | None = option(None, "search space file (default: lr 1e-4..1e-2 log, batch_size 8..32, epochs 3..10)",
                               metavar="SPACE.yaml")
    objective: str = option("val_loss", "val_loss (minimized) or val_accuracy (maximized)", choices=tuple(OBJECTIVES))
    sampler: str = option("tpe", "how trials choose their values", choices=SAMPLERS)
    pruner: str = option("median", "median (SageMaker's Auto early stopping), hyperband or none", choices=PRUNERS)
    seed: int = option(0, "seeds the sampler (the command passes training's --seed)")
    heartbeat: int = option(10, "seconds between a trial's heartbeats; a trial silent for 3 heartbeats is failed and retried")
    final: bool = option(True, "train the best hyperparameters into a run and artifact at the end")

    def validate(self) -> "TuneOptions":
        if self.trials < 1:
            raise DogbreedError(f"--trials must be at least 1, got {self.trials}")
        if self.parallel < 1:
            raise DogbreedError(f"--parallel must be at least 1, got {self.parallel}")
        check_choices(self, as_flags=True)
        if self.heartbeat < 1:
            raise DogbreedError(f"--heartbeat must be at least 1 second, got {self.heartbeat}")
        return self
