"""Training under ``torchrun``: the process group, which rank this is, and the exchanges both
paths need.

``torchrun --nproc-per-node N -m dogbreed train ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set. gloo on CPUs, NCCL on GPUs.

- Cached embeddings (frozen backbone): every rank embeds its share of the images (the expensive
  part), rank 0 sums the shares into the full embeddings and alone trains the head; the other
  ranks end once their shares are in.
- Images (``--train-layers layer4|all``): DistributedDataParallel. ``--batch-size`` is the global
  batch, split evenly over the ranks; each epoch every rank draws its part of one shuffled order
  (``DistributedSampler`` with ``set_epoch``); evaluation runs over unpadded shards and sums
  loss, hits and counts over the ranks, so its numbers are a one-process run's.

Either way rank 0 alone writes the run folder, checkpoints, artifact and report.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from dogbreed.errors import DogbreedError

log = logging.getLogger(__name__)
TIMEOUT_S = 1800  # how long a rank waits for the others at an exchange (a share may take that long to embed)


def world_size() -> int:
    """How many ranks: the process group's once joined, torchrun's environment before."""
    return dist.get_world_size() if joined() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if joined() else int(os.environ.get("RANK", "0"))


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
    return range(rank(), count, world_size())


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of ``dataset``, unpadded (what evaluation reads: no image counted twice).
    Items keep their index in the whole split (``ImageDataset`` reports it)."""
    return Subset(dataset, share(len(dataset))) if joined() else dataset


def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler:
    """Each rank's part of one shuffled order per epoch (``set_epoch``); padded so that every rank
    takes the same number of steps."""
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)


def split_batch(batch_size: int) -> int:
    """Each rank's part of the global ``--batch-size``."""
    ranks = world_size()
    if batch_size % ranks:
        raise DogbreedError(f"--batch-size {batch_size} is the global batch and does not split evenly over {ranks} "
                            f"ranks; pass a multiple of {ranks}")
    return batch_size // ranks


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel: gradients averaged over the ranks at every step."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``values``, on every rank."""
    moved = _placed(values)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(values.device)


def gathered(obj):
    """Every rank's ``obj`` (tensors travel on the CPU), in rank order, on every rank."""
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def from_main(obj):
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's ``module`` (the best epoch's weights,
    which rank 0 alone reads from its checkpoint)."""
    for tensor in module.state_dict().values():
        moved = _placed(tensor)
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)


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
