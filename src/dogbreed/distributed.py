"""Training under ``torchrun``: the process group, which rank this is, and the one exchange the
frozen-backbone path needs.

``torchrun --nproc-per-node N -m dogbreed train ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set. On the cached-embedding path every rank
embeds its share of the images (the expensive part), rank 0 sums the shares into the full
embeddings, and rank 0 alone trains the head and writes the run folder, checkpoints, artifact and
report; the other ranks end once their shares are in. gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from dogbreed.errors import DogbreedError

log = logging.getLogger(__name__)
TIMEOUT_S = 1800  # how long a rank waits for the others at an exchange (a share may take that long to embed)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether this process is one rank of several (started by torchrun)."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def local_cpus() -> int:
    """This rank's part of the machine's CPUs (torchrun starts LOCAL_WORLD_SIZE ranks on each): how
    many image-decoding workers it starts, unless --workers says."""
    from dogbreed.machine import available_cpus

    return max(1, available_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def joined() -> bool:
    """Whether this process joined a process group (``dogbreed train`` under torchrun does; tuning
    trials never do, even when their environment says torchrun started them)."""
    return dist.is_available() and dist.is_initialized()


def init(device: torch.device) -> None:
    """Join the process group once; a rank that cannot is one line."""
    if not active() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds; each means the same to the user
        raise DogbreedError(f"rank {rank()} of {world_size()} could not join the others ({exc}); check "
                            f"MASTER_ADDR/MASTER_PORT, or start it with torchrun") from None
    log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)


def close() -> None:
    if joined():
        dist.destroy_process_group()


def share(count: int) -> range:
    """The indices of ``count`` items this rank handles: every WORLD_SIZE-th, from its rank."""
    return range(dist.get_rank(), count, dist.get_world_size())


def agree(flag: bool) -> bool:
    """Rank 0's ``flag``, on every rank (whether rank 0 already has an entry: then nobody computes)."""
    value = _placed(torch.tensor([int(flag)]))
    dist.broadcast(value, src=0)
    return bool(value.item())


def sum_to_main(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``tensor`` on rank 0 (each holds its share, zeros elsewhere)."""
    moved = _placed(tensor)
    dist.reduce(moved, dst=0, op=dist.ReduceOp.SUM)
    return moved.to(tensor.device)


def largest(value: int) -> int:
    """The largest ``value`` of all ranks, on every rank."""
    tensor = _placed(torch.tensor([value]))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def _placed(tensor: torch.Tensor) -> torch.Tensor:
    """Where the process group's backend exchanges tensors: NCCL on this rank's GPU, gloo in memory."""
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor.cpu()
