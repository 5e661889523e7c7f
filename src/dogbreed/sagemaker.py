"""A SageMaker training job's entry point: ``python -m dogbreed.sagemaker --learning_rate 0.0044 ...``.

SageMaker runs the entry script with the job's hyperparameters as flags and nothing else, so this
is ``dogbreed train`` with those flags; data and output locations come from the ``SM_*`` variables.
"""

from __future__ import annotations

import sys

from dogbreed.cli import main as cli_main
from dogbreed.config import FIELD_TYPES, SAGEMAKER_ALIASES, coerce
from dogbreed.errors import DogbreedError


def check_hyperparameters(argv: list[str]) -> None:
    """Each ``--name value`` pair (SageMaker's only form) names a training option and fits its type;
    the error names the hyperparameter as the job spelled it."""
    args = iter(argv)
    for arg in args:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else (arg, "", "")
        key = SAGEMAKER_ALIASES.get(name, name).replace("-", "_")
        if not arg.startswith("--") or key not in FIELD_TYPES:
            raise DogbreedError(f"unknown hyperparameter {arg!r}; training options: {', '.join(FIELD_TYPES)}")
        if not eq:
            value = next(args, None)
            if value is None or value.startswith("--"):
                raise DogbreedError(f"hyperparameter {arg} has no value (SageMaker passes --name value)")
        try:
            coerce(key, value)
        except DogbreedError as exc:
            raise DogbreedError(f"hyperparameter {arg}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_hyperparameters(argv)
    except DogbreedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return cli_main(["train", "--no-progress", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
