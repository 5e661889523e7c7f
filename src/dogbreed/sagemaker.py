"""A SageMaker training job's entry point: ``python -m dogbreed.sagemaker --learning_rate 0.0044 ...``.

SageMaker runs the entry script with the job's hyperparameters as flags and nothing else, so this
is ``dogbreed train`` with those flags; data and output locations come from the ``SM_*`` variables.

On several hosts SageMaker starts it once per host (``SM_HOSTS``, ``SM_CURRENT_HOST``): the host's
place in the sorted host list is its rank, the first host the rendezvous (port 7777), as under
``dogbreed train`` with torchrun (docs/scale-out.md); under SageMaker's ``torch_distributed``
launcher torchrun has set all of that already. A job that fails leaves its one-line reason in
``/opt/ml/output/failure`` (``$SAGEMAKER_BASE_DIR/output/failure``), which SageMaker shows as the
job's failure reason.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

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


RENDEZVOUS_PORT = "7777"


def cluster_env(env: dict) -> dict:
    """What torch.distributed needs when SageMaker starts this once on each of several hosts; nothing
    on one host, or when torchrun (SageMaker's torch_distributed) has set it."""
    hosts = sorted(json.loads(env.get("SM_HOSTS") or "[]"))
    if "WORLD_SIZE" in env or len(hosts) < 2:
        return {}
    current = env.get("SM_CURRENT_HOST")
    if current not in hosts:
        raise DogbreedError(f"SM_CURRENT_HOST {current!r} is not one of SM_HOSTS {hosts}")
    return {"RANK": str(hosts.index(current)), "WORLD_SIZE": str(len(hosts)), "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": env.get("MASTER_ADDR", hosts[0]),
            "MASTER_PORT": env.get("MASTER_PORT", RENDEZVOUS_PORT)}


class _Tee:
    """stderr as it was, remembering the last ``error: ...`` line (the job's failure reason)."""

    def __init__(self, stream):
        self.stream, self.last_error = stream, None

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("error: "):
                self.last_error = line.removeprefix("error: ")
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def write_failure(reason: str) -> None:
    """SageMaker's failure file, in a job only (its output folder exists, or SAGEMAKER_BASE_DIR says where)."""
    base = os.environ.get("SAGEMAKER_BASE_DIR")
    output = Path(base or "/opt/ml") / "output"
    if base or output.is_dir():
        output.mkdir(parents=True, exist_ok=True)
        (output / "failure").write_text(reason.strip().splitlines()[0] + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tee = _Tee(sys.stderr)
    sys.stderr = tee
    try:
        try:
            check_hyperparameters(argv)
            os.environ.update(cluster_env(dict(os.environ)))
        except DogbreedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        else:
            code = cli_main(["train", "--no-progress", *argv])
    except SystemExit as exc:  # argparse's refusals
        if exc.code:
            write_failure(tee.last_error or f"dogbreed train exited with status {exc.code}")
        raise
    except BaseException as exc:  # a crash, not a refusal: its type and message are the reason
        write_failure(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        sys.stderr = tee.stream
    if code:
        write_failure(tee.last_error or f"dogbreed train exited with status {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
