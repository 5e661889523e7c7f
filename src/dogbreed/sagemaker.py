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

from dogbreed import cli
from dogbreed.config import FIELD_TYPES, Flag, coerce, read_argv
from dogbreed.config import write_sagemaker_failure as write_failure
from dogbreed.errors import DogbreedError


def hyperparameters(argv: list[str]) -> list[str]:
    """The job's flags in our spelling. Each ``--name value`` pair (SageMaker's only form) must name
    a training option and fit its type, and set it once: ``--lr 0.01 --learning_rate 0.02`` is two
    answers to one question, not a later one that wins. The error names the hyperparameter as the
    job spelled it."""
    flags = read_argv(argv)
    first: dict[str, tuple[Flag, object]] = {}
    for flag in flags:
        if not isinstance(flag, Flag) or flag.key not in FIELD_TYPES:
            given = flag.given if isinstance(flag, Flag) else flag
            raise DogbreedError(f"unknown hyperparameter {given!r}; training options: {', '.join(FIELD_TYPES)}")
        if flag.value is None:
            raise DogbreedError(f"hyperparameter {flag.given} has no value (SageMaker passes --name value)")
        try:
            value = coerce(flag.key, flag.value)
        except DogbreedError as exc:
            raise DogbreedError(f"hyperparameter {flag.given}: {exc}") from None
        earlier, seen = first.setdefault(flag.key, (flag, value))
        if seen != value:
            raise DogbreedError(f"hyperparameters {earlier.given} {earlier.value} and {flag.given} {flag.value} both set "
                                f"{flag.key}; keep one")
    return [word for flag in flags for word in flag.ours()]


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


def _train(argv: list[str]) -> tuple[int, str | None]:
    """``dogbreed train`` with the job's hyperparameters: its exit code and its one-line error."""
    try:
        flags = hyperparameters(argv)
        if not os.environ.get("SM_CHANNEL_TRAINING") and "data" not in {f.key for f in read_argv(flags) if isinstance(f, Flag)}:
            # where a job's data comes from: "pass --data" would name a flag the job never sees
            raise DogbreedError("SM_CHANNEL_TRAINING is not set: the job has no 'training' input channel; give it one "
                                "(estimator.fit({'training': 's3://BUCKET/PREFIX/'})) or a data hyperparameter")
        os.environ.update(cluster_env(dict(os.environ)))
    except DogbreedError as exc:
        return 1, str(exc)
    return cli.run(["train", "--no-progress", *flags])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code, error = _train(argv)
    except SystemExit as exc:  # argparse's refusals (it has said why on stderr)
        if exc.code:
            write_failure(f"dogbreed train exited with status {exc.code}")
        raise
    except BaseException as exc:  # a crash, not a refusal: its type and message are the reason
        write_failure(f"{type(exc).__name__}: {exc}")
        raise
    if error:
        print(f"error: {error}", file=sys.stderr)
    if code:
        write_failure(error or f"dogbreed train exited with status {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
