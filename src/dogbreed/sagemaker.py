"""A SageMaker training job's entry point: ``python -m dogbreed.sagemaker --learning_rate 0.0044 ...``.

SageMaker runs the entry script with the job's hyperparameters as flags and nothing else, so this
is ``dogbreed train`` with those flags; data and output locations come from the ``SM_*`` variables.
"""

from __future__ import annotations

import sys

from dogbreed.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", "--no-progress", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
