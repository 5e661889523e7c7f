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

import contextlib
import datetime
import json
import logging
import os
import sys
import threading
import time

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
    if device.type == "cuda":  # resolve_device gave each rank on a machine its LOCAL_RANK's GPU
        torch.cuda.set_device(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds; each means the same to the user
        raise DogbreedError(f"rank {rank()} of {world_size()} could not join the others ({exc}); check "
                            f"MASTER_ADDR/MASTER_PORT, or start it with torchrun") from None
    log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)


def close(error: str | None = None) -> None:
    """Leave the job: done, or failed with ``error`` (the others then end at once, naming this rank)."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.finish(error)
        _watchdog = None
    if joined():
        dist.destroy_process_group()


def failed_peer() -> str | None:
    """The line naming another rank that failed and said why (an exchange here then fails on the
    connection it closed, with gloo's words, not its), or None."""
    return _watchdog.failed_peer() if _watchdog is not None else None


# -- the watchdog: a hung rank ends the job in bounded time, named ----------------------------------
#
# Collectives wait up to TIMEOUT_S (a slow rank's share of the embedding can take that long), and
# gloo's timeout does not say whom it waited for. So each rank's thread posts to the rendezvous
# store, every few seconds, a beat (the thread is alive), its point (how many steps and exchanges
# it has entered, in the same order on every rank) and its ticks (batches of any work). Each rank
# reads every rank's post; a rank that stopped answering (no new beat: stopped, frozen, its machine
# gone) or that sits behind the others' point with no new tick, for ``rank_timeout`` seconds, is
# named in one line by the lowest healthy rank, which then exits; torchrun ends the others. A rank
# that fails says so in its post, and the others end at once (SageMaker's hosts have no torchrun to
# end them).

_watchdog = None
DONE, FAILED = "done", "failed: "
_progress = {"point": 0, "ticks": 0, "at": "starting", "busy": 0}
on_fatal: list = []  # callables given the line a watchdog ends the process with (SageMaker's failure file)


def point(at: str) -> None:
    """This rank enters a step or an exchange every rank enters in the same order."""
    _progress["point"] += 1
    _progress["at"] = at


def tick() -> None:
    """This rank did a batch of work (embedding, a step, an evaluation batch, a fetch)."""
    _progress["ticks"] += 1


@contextlib.contextmanager
def busy():
    """Work this rank does alone (rank 0 writing checkpoints, the artifact, the report) while the
    others wait at the next exchange: the watchdog counts it as work for as long as it lasts."""
    _progress["busy"] += 1
    try:
        yield
    finally:
        _progress["busy"] -= 1


class Watchdog(threading.Thread):
    def __init__(self, timeout_s: float, interval_s: float | None = None):
        super().__init__(name="dogbreed-rank-watchdog", daemon=True)
        self.timeout = timeout_s
        self.interval = interval_s or max(0.5, min(5.0, timeout_s / 10))
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=max(30, timeout_s)))
        self.store = dist.PrefixStore(f"dogbreed-watch/{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}", store)
        self.rank, self.ranks = rank(), world_size()
        self.halt = threading.Event()
        self.beat = 0
        self.seen: dict[int, tuple] = {}  # rank -> (beat, point, ticks, at) last read
        self.changed: dict[int, dict[str, float]] = {}  # rank -> when its beat / progress last changed (our clock)
        self.answered = time.monotonic()  # when the store last answered a whole round

    def finish(self, error: str | None = None) -> None:
        """This rank is done, or failed with ``error``: the others stop watching it, or end."""
        self.halt.set()
        self.join(timeout=self.interval + 30)
        if time.monotonic() - self.answered > self.timeout:
            return  # the store stopped answering: a last call would block
        where = "" if _progress["point"] == 0 else f" (at {_progress['at']})"
        at = DONE if error is None else f"{FAILED}{error}{where}"
        with contextlib.suppress(Exception):
            self.store.set(f"r{self.rank}", json.dumps([self.beat + 1, _progress["point"], _progress["ticks"], at]))

    def run(self) -> None:
        # A store call blocks for good when the store's host vanishes without closing the connection
        # (its machine gone, the network cut): a second thread bounds every round by the timeout.
        threading.Thread(target=self.guard, name="dogbreed-rank-watchdog-guard", daemon=True).start()
        while not self.halt.wait(self.interval):
            try:
                self.round(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the store itself is gone: the rendezvous host stopped
                if not self.halt.is_set():
                    self.end(f"rank {self.rank} lost the rendezvous store at {os.environ.get('MASTER_ADDR')} "
                             f"({type(exc).__name__}: {exc}); the job cannot go on")
            self.answered = time.monotonic()

    def guard(self) -> None:
        while not self.halt.wait(self.interval):
            quiet = time.monotonic() - self.answered
            if quiet > self.timeout + self.interval and not self.halt.is_set():
                self.end(f"rank {self.rank} has had no answer from the rendezvous store at "
                         f"{os.environ.get('MASTER_ADDR')} for {quiet:.0f} s: its machine or the network to it is "
                         f"gone; ending this rank (--rank-timeout {self.timeout:g})")

    def failed_peer(self) -> str | None:
        for r in range(self.ranks):
            key = f"r{r}"
            if r != self.rank and self.store.check([key]):
                at = json.loads(self.store.get(key))[3]
                if at.startswith(FAILED):
                    return _failed(r, at)
        return None

    def round(self, now: float) -> None:
        self.beat += 1
        if _progress["busy"]:
            tick()
        self.store.set(f"r{self.rank}", json.dumps([self.beat, _progress["point"], _progress["ticks"], _progress["at"]]))
        keys = [f"r{r}" for r in range(self.ranks)]
        if not self.store.check(keys):
            return  # not every rank has posted yet
        for r, raw in enumerate(self.store.multi_get(keys)):
            beat, where, ticks, at = json.loads(raw)
            if at == DONE:  # finished (a rank but 0 on cached embeddings ends after its share)
                self.seen.pop(r, None)
                self.changed.pop(r, None)
                continue
            if at.startswith(FAILED):  # it said why: every rank ends now, the lowest other one says it
                self.end(_failed(r, at), say=self.rank == min(set(range(self.ranks)) - {r}))
            before = self.seen.get(r)
            mark = self.changed.setdefault(r, {"beat": now, "work": now})
            if before is None or beat != before[0]:
                mark["beat"] = now
            if before is None or (where, ticks) != (before[1], before[2]):
                mark["work"] = now
            self.seen[r] = (beat, where, ticks, at)
        if line := self.verdict(now):
            self.end(line)

    def verdict(self, now: float) -> str | None:
        """The one line that ends the job, said by the lowest healthy rank; None while all is well."""
        if not self.seen:
            return None
        silent = [r for r, mark in self.changed.items() if now - mark["beat"] > self.timeout]
        front = max(seen[1] for seen in self.seen.values())
        behind = [r for r, (_, where, _, _) in self.seen.items()
                  if where < front and now - self.changed[r]["work"] > self.timeout and r not in silent]
        # Every rank idle (and more than one left to wait on another): an exchange that never ends.
        stalled = len(self.seen) > 1 and all(now - mark["work"] > self.timeout for mark in self.changed.values())
        culprits = silent or behind
        if not culprits and not stalled:
            return None
        healthy = sorted(r for r in self.seen if r not in culprits)
        if self.rank != (healthy[0] if healthy else min(self.seen)):
            return None  # another rank says it
        s = self.timeout
        if silent:
            return (f"{_ranks(silent)} stopped answering {s:g} s ago (last at {self.seen[silent[0]][3]}): stopped, "
                    f"frozen or its machine gone; ending the job (--rank-timeout {s:g})")
        if behind:
            leader = max(self.seen, key=lambda r: self.seen[r][1])
            return (f"{_ranks(behind)} made no progress for {s:g} s at {self.seen[behind[0]][3]} while the others "
                    f"wait at {self.seen[leader][3]}; ending the job (--rank-timeout {s:g})")
        return (f"every rank has made no progress for {s:g} s (at {self.seen[min(self.seen)][3]}): an exchange never "
                f"completed; ending the job (--rank-timeout {s:g})")

    def end(self, line: str, say: bool = True) -> None:
        """End this process at once (the main thread may be blocked in an exchange) for the reason
        ``line``, printed unless another rank says it."""
        if say:
            sys.stderr.write(f"error: {line}\n")
            sys.stderr.flush()
        for hook in on_fatal:
            with contextlib.suppress(Exception):
                hook(line)
        os._exit(1)


def _failed(r: int, at: str) -> str:
    """The line that names rank ``r``, whose post ``at`` says it failed and why."""
    return f"rank {r} failed: {at.removeprefix(FAILED)}; ending the job"


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def watch(timeout_s: float) -> None:
    """Start this rank's watchdog (after ``init``)."""
    global _watchdog
    if joined() and _watchdog is None:
        _watchdog = Watchdog(timeout_s)
        _watchdog.start()


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
    point("an exchange (the sums)")
    moved = _placed(values)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(values.device)


def gathered(obj):
    """Every rank's ``obj`` (tensors travel on the CPU), in rank order, on every rank."""
    point("an exchange (per-image results)")
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def from_main(obj):
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    point("an exchange (rank 0's value)")
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's ``module`` (the best epoch's weights,
    which rank 0 alone reads from its checkpoint)."""
    point("an exchange (the best weights)")
    for tensor in module.state_dict().values():
        moved = _placed(tensor)
        dist.broadcast(moved, src=0)
        if moved is not tensor:
            tensor.copy_(moved)


def agree(flag: bool) -> bool:
    """Rank 0's ``flag``, on every rank (whether rank 0 already has an entry: then nobody computes)."""
    point("an exchange (rank 0's decision)")
    value = _placed(torch.tensor([int(flag)]))
    dist.broadcast(value, src=0)
    return bool(value.item())


def sum_to_main(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``tensor`` on rank 0 (each holds its share, zeros elsewhere)."""
    point("the exchange of the embeddings")
    moved = _placed(tensor)
    dist.reduce(moved, dst=0, op=dist.ReduceOp.SUM)
    return moved.to(tensor.device)


def largest(value: int) -> int:
    """The largest ``value`` of all ranks, on every rank."""
    point("an exchange (the embeddings' width)")
    tensor = _placed(torch.tensor([value]))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def _placed(tensor: torch.Tensor) -> torch.Tensor:
    """Where the process group's backend exchanges tensors: NCCL on this rank's GPU, gloo in memory."""
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor.cpu()
