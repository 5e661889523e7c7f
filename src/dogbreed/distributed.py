"""Training under ``torchrun``: which rank this process is, what it does, and every exchange
between the ranks, held by one :class:`Ranks` object that ``session`` makes and the run passes down.

``torchrun --nproc-per-node N -m dogbreed train ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set. gloo on CPUs, NCCL on GPUs.

A process is one of:

- single: no other rank (plain ``dogbreed train``, a tuning trial). Every exchange is the identity.
- share (cached embeddings, frozen backbone): every rank embeds its share of the images (the
  expensive part), rank 0 sums the shares into the full embeddings and alone trains the head; the
  other ranks end once their shares are in.
- ddp (``--train-layers layer4|all``): DistributedDataParallel. ``--batch-size`` is the global
  batch, dealt over the ranks (29 on 2 ranks: 15 and 14; :class:`RankBatches`), and each rank's
  loss is weighted so that DDP's average of the ranks' gradients is one process's gradient on the
  whole batch; evaluation runs over unpadded shards and sums loss, hits and counts over the ranks,
  so its numbers are a one-process run's.

Either way rank 0 alone writes the run folder, checkpoints, artifact and report (``writer``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler, Subset

from dogbreed.errors import DogbreedError, JobError
from dogbreed.watchdog import Progress, Watchdog

log = logging.getLogger(__name__)
TIMEOUT_S = 1800  # how long a rank waits for the others at an exchange (a share may take that long to embed)
SINGLE, SHARE, DDP = "single", "share", "ddp"


@dataclass
class Ranks:
    """This process's place among the ranks and the exchanges between them. Outside a process group
    (``role`` single) every exchange returns this rank's own value, so callers need not ask."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # ranks on this machine
    role: str = SINGLE
    progress: Progress = field(default_factory=Progress)
    watchdog: Watchdog | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    writer = main  # rank 0 alone writes the run folder, checkpoints, artifact and report

    @property
    def joined(self) -> bool:
        return self.role != SINGLE

    @property
    def ddp(self) -> bool:
        """The ranks step together (DDP on images): every epoch's steps and evaluation are shared."""
        return self.role == DDP

    @property
    def shares(self) -> bool:
        """The ranks embed shares of the images; rank 0 trains the head alone."""
        return self.role == SHARE

    # -- the watchdog's view of this rank ---------------------------------------------------------

    def point(self, at: str) -> None:
        """This rank enters a step or an exchange every rank enters in the same order."""
        self.progress.enter(at)

    def tick(self) -> None:
        """This rank did a batch of work (embedding, a step, an evaluation batch, a fetch)."""
        self.progress.tick()

    @contextlib.contextmanager
    def busy(self):
        """Work this rank does alone (rank 0 writing checkpoints, the artifact, the report) while the
        others wait at the next exchange: the watchdog counts it as work for as long as it lasts."""
        self.progress.busy += 1
        try:
            yield
        finally:
            self.progress.busy -= 1

    def local_cpus(self) -> int:
        """This rank's part of the machine's CPUs: how many image-decoding workers it starts."""
        from dogbreed.machine import available_cpus

        return max(1, available_cpus() // self.local_world)

    # -- what each rank reads -----------------------------------------------------------------------

    def share(self, count: int) -> range:
        """The indices of ``count`` items this rank handles: every ``world``-th, from its rank."""
        return range(self.rank, count, self.world)

    def shard(self, dataset: Dataset) -> Dataset:
        """This rank's share of ``dataset``, unpadded (what evaluation reads: no image counted twice).
        Items keep their index in the whole split (``ImageDataset`` reports it)."""
        return Subset(dataset, self.share(len(dataset))) if self.joined else dataset

    def train_batches(self, count: int, batch_size: int, seed: int) -> RankBatches | None:
        """This rank's part of every global batch of ``batch_size`` over ``count`` training items,
        in a new order each epoch (``set_epoch``). None for one process (the loader batches and shuffles)."""
        if not self.joined:
            return None
        return RankBatches(count, batch_size, self.rank, self.world, seed)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over the ranks at every step), or
        ``model`` itself for one process."""
        if not self.joined:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    # -- exchanges: every rank calls each in the same order ------------------------------------------

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``values``, on every rank."""
        if not self.joined:
            return values
        self.point("an exchange (the sums)")
        moved = _placed(values)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(values.device)

    def gathered(self, obj) -> list:
        """Every rank's ``obj`` (tensors travel on the CPU), in rank order, on every rank."""
        if not self.joined:
            return [obj]
        self.point("an exchange (per-image results)")
        parts = [None] * self.world
        dist.all_gather_object(parts, obj)
        return parts

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
        if not self.joined:
            return obj
        self.point("an exchange (rank 0's value)")
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's ``module`` (the best epoch's weights,
        which rank 0 alone reads from its checkpoint)."""
        if not self.joined:
            return
        self.point("an exchange (the best weights)")
        for tensor in module.state_dict().values():
            moved = _placed(tensor)
            dist.broadcast(moved, src=0)
            if moved is not tensor:
                tensor.copy_(moved)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank (whether rank 0 already has an entry: then nobody computes)."""
        if not self.joined:
            return flag
        self.point("an exchange (rank 0's decision)")
        value = _placed(torch.tensor([int(flag)]))
        dist.broadcast(value, src=0)
        return bool(value.item())

    def sum_to_main(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``tensor`` on rank 0 (each holds its share, zeros elsewhere)."""
        if not self.joined:
            return tensor
        self.point("the exchange of the embeddings")
        moved = _placed(tensor)
        dist.reduce(moved, dst=0, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)

    def largest(self, value: int) -> int:
        """The largest ``value`` of all ranks, on every rank."""
        if not self.joined:
            return value
        self.point("an exchange (the embeddings' width)")
        tensor = _placed(torch.tensor([value]))
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def collect(self, name: str, value, *, timeout_s: float = TIMEOUT_S) -> list | None:
        """Every rank's ``value`` (JSON), in rank order, at rank 0, for ranks outside a process group
        (tuning's ranks share a study, not a group), through torchrun's rendezvous store: the other
        ranks post theirs and go on at once (None); rank 0 waits up to ``timeout_s`` for them.
        Alone: ``[value]``. A store that cannot be reached is one line (DogbreedError)."""
        if self.world == 1:
            return [value]
        try:
            # env:// connects to the agent's store as torch's own process group would (or, under a
            # launcher without one, rank 0 hosts it); a restarted job posts afresh.
            store, _, _ = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout_s)))
            store = dist.PrefixStore(f"dogbreed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}", store)
            if not self.main:
                store.set(str(self.rank), json.dumps(value))
                return None
            keys = [str(r) for r in range(1, self.world)]
            store.wait(keys, datetime.timedelta(seconds=timeout_s))
            return [value, *(json.loads(v) for v in store.multi_get(keys))]
        except (RuntimeError, ValueError) as exc:  # torch's store errors are RuntimeErrors; a missing variable a ValueError
            raise DogbreedError(f"rank {self.rank} could not exchange {name} with the other ranks through the "
                                f"rendezvous store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                                f"({exc})") from None

    # -- joining and leaving -----------------------------------------------------------------------

    def join(self, device: torch.device, *, rank_timeout: float | None = None,
             on_fatal: Callable[[str], None] | None = None) -> None:
        """Join the process group (a rank that cannot is one line) and, with ``rank_timeout``,
        start this rank's watchdog."""
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":  # resolve_device gave each rank on a machine its LOCAL_RANK's GPU
            torch.cuda.set_device(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
            except Exception as exc:  # noqa: BLE001 - torch raises several kinds; each means the same to the user
                raise DogbreedError(f"rank {self.rank} of {self.world} could not join the others ({exc}); check "
                                    f"MASTER_ADDR/MASTER_PORT, or start it with torchrun") from None
            log.info("rank %d of %d joined (%s)", self.rank, self.world, backend)
        if rank_timeout is not None and self.watchdog is None:
            self.watchdog = Watchdog(self.rank, self.world, self.progress, rank_timeout, on_fatal=on_fatal)
            self.watchdog.start()

    def failed_peer(self) -> str | None:
        """The line naming another rank that failed and said why (an exchange here then fails on the
        connection it closed, with gloo's words, not its), or None."""
        return self.watchdog.failed_peer() if self.watchdog is not None else None

    def close(self, error: str | None = None) -> None:
        """Leave the job: done, or failed with ``error`` (the others then end at once, naming this rank)."""
        if self.watchdog is not None:
            self.watchdog.finish(error)
            self.watchdog = None
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()


class RankBatches(Sampler[list[int]]):
    """One rank's part of every global batch (a DataLoader's ``batch_sampler``). Each epoch every
    rank draws the same shuffled order of the ``count`` items (``seed`` plus the epoch), cuts it
    into global batches of ``batch_size`` (the last one shorter, as one process's last batch) and
    takes every ``world``-th item of each from its own rank on: the shares of a batch differ by one
    item at most, no item is read twice or padded in, and every rank takes one step per global
    batch. A share can be empty (a last batch smaller than the ranks): the loader then gives None,
    and the rank steps with nothing to add."""

    def __init__(self, count: int, batch_size: int, rank: int, world: int, seed: int):
        self.count, self.batch_size, self.rank, self.world, self.seed = count, batch_size, rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, self.count, self.batch_size):
            yield order[start : start + self.batch_size][self.rank :: self.world]

    def global_size(self, step: int) -> int:
        """How many items the whole batch of ``step`` (from 0) holds, over every rank."""
        return min(self.batch_size, self.count - step * self.batch_size)


def from_environment(role: str = SINGLE) -> Ranks:
    """This process's rank as torchrun's environment says, in ``role`` when it is one of several
    (SINGLE: it knows its place but exchanges nothing, as a tuning worker)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Ranks(rank=int(env.get("RANK", "0")), world=world, local_world=int(env.get("LOCAL_WORLD_SIZE", "1")),
                 role=role if world > 1 else SINGLE)


ALONE = Ranks()  # one process, no other rank: the default wherever ranks are passed


def started_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(cfg, *, join: bool = True, on_fatal: Callable[[str], None] | None = None) -> Iterator[Ranks]:
    """The ranks of a run with ``cfg`` (a TrainConfig: its device, path and --rank-timeout), for as
    long as it lasts; rank 0 alone speaks. Under torchrun with ``join`` the process joins the others,
    watched by the watchdog; a rank that fails posts why, so the others end at once naming it, and
    ``on_fatal`` gets the line a watchdog ends the process with. Without ``join`` (a tuning worker)
    the ranks only know their places: they share a study, not a process group."""
    joining = join and started_by_torchrun()
    ranks = from_environment((SHARE if cfg.uses_feature_cache else DDP) if joining else SINGLE)
    if ranks.ddp and cfg.batch_size < ranks.world:  # checked before joining: no rank waits on one that left
        raise JobError(f"--batch-size {cfg.batch_size} is the global batch, dealt over {ranks.world} ranks: pass at "
                       f"least {ranks.world} (an image for each rank)", rank=ranks.rank)
    if joining:
        from dogbreed.machine import resolve_device

        ranks.join(resolve_device(cfg.device), rank_timeout=cfg.rank_timeout, on_fatal=on_fatal)  # each rank says it joined
    logger = logging.getLogger("dogbreed")
    level = logger.level
    if not ranks.main:
        logger.setLevel(logging.WARNING)
    try:
        yield ranks
    except BaseException as exc:
        if joining:
            peer = None if isinstance(exc, DogbreedError) else ranks.failed_peer()
            ranks.close(str(exc) if isinstance(exc, DogbreedError) else peer or f"{type(exc).__name__}: {exc}")
            if peer:  # this rank's exchange failed because that one ended: say why it did
                raise DogbreedError(peer) from None
        raise
    else:
        ranks.close()
    finally:
        logger.setLevel(level)


def _placed(tensor: torch.Tensor) -> torch.Tensor:
    """Where the process group's backend exchanges tensors: NCCL on this rank's GPU, gloo in memory."""
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor.cpu()
