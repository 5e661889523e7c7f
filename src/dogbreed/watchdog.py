"""A hung torchrun rank ends the job in bounded time, named in one line.

Collectives wait up to ``distributed.TIMEOUT_S`` (a slow rank's share of the embedding can take
that long), and gloo's timeout does not say whom it waited for. So each rank's thread posts to the
rendezvous store, every few seconds, a beat (the thread is alive), its point (how many steps and
exchanges it has entered, in the same order on every rank) and its ticks (batches of any work).
Each rank reads every rank's post; a rank that stopped answering (no new beat: stopped, frozen, its
machine gone) or that sits behind the others' point with no new tick, for ``rank_timeout`` seconds,
is named in one line by the lowest healthy rank, which then exits; torchrun ends the others. A rank
that fails says so in its post, and the others end at once (SageMaker's hosts have no torchrun to
end them).

Written by hand: torch's own elastic agent restarts or kills a group on a worker's exit, but
neither it nor the collectives' timeout says which rank hung, and neither bounds a store call
whose host vanished.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.distributed as dist

DONE, FAILED = "done", "failed: "


@dataclass
class Progress:
    """How far this rank has come: what its watchdog posts."""

    point: int = 0  # steps and exchanges entered, in the same order on every rank
    ticks: int = 0  # batches of any work
    at: str = "starting"  # the last point entered, in words
    busy: int = 0  # > 0 while this rank works alone (rank 0 writing): counted as work

    def enter(self, at: str) -> None:
        self.point += 1
        self.at = at

    def tick(self) -> None:
        self.ticks += 1

    def post(self, beat: int, at: str | None = None) -> str:
        return json.dumps([beat, self.point, self.ticks, self.at if at is None else at])


class Watchdog(threading.Thread):
    """This rank's watch over every rank, through the rendezvous store (``MASTER_ADDR``/``MASTER_PORT``)."""

    def __init__(self, rank: int, ranks: int, progress: Progress, timeout_s: float, interval_s: float | None = None,
                 on_fatal: Callable[[str], None] | None = None):
        super().__init__(name="dogbreed-rank-watchdog", daemon=True)
        self.timeout = timeout_s
        self.interval = interval_s or max(0.5, min(5.0, timeout_s / 10))
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=max(30, timeout_s)))
        self.store = dist.PrefixStore(f"dogbreed-watch/{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}", store)
        self.rank, self.ranks, self.progress, self.on_fatal = rank, ranks, progress, on_fatal
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
        where = "" if self.progress.point == 0 else f" (at {self.progress.at})"
        at = DONE if error is None else f"{FAILED}{error}{where}"
        with contextlib.suppress(Exception):
            self.store.set(f"r{self.rank}", self.progress.post(self.beat + 1, at))

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
        """The line naming another rank that failed and said why, or None."""
        for r in range(self.ranks):
            key = f"r{r}"
            if r != self.rank and self.store.check([key]):
                at = json.loads(self.store.get(key))[3]
                if at.startswith(FAILED):
                    return _failed(r, at)
        return None

    def round(self, now: float) -> None:
        self.beat += 1
        if self.progress.busy:
            self.progress.tick()
        self.store.set(f"r{self.rank}", self.progress.post(self.beat))
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
        if line := verdict(self.seen, self.changed, now, self.timeout, self.rank):
            self.end(line)

    def end(self, line: str, say: bool = True) -> None:
        """End this process at once (the main thread may be blocked in an exchange) for the reason
        ``line``, printed unless another rank says it."""
        if say:
            sys.stderr.write(f"error: {line}\n")
            sys.stderr.flush()
        if self.on_fatal is not None:
            with contextlib.suppress(Exception):
                self.on_fatal(line)
        os._exit(1)


def verdict(seen: dict[int, tuple], changed: dict[int, dict[str, float]], now: float, timeout: float,
            me: int) -> str | None:
    """The one line that ends the job, when rank ``me`` is the one to say it; None while all is well.
    ``seen``: each watched rank's last post (beat, point, ticks, at); ``changed``: when its beat and
    its work last changed, on ``now``'s clock."""
    if not seen:
        return None
    silent = [r for r, mark in changed.items() if now - mark["beat"] > timeout]
    front = max(post[1] for post in seen.values())
    behind = [r for r, (_, where, _, _) in seen.items()
              if where < front and now - changed[r]["work"] > timeout and r not in silent]
    # Every rank idle (and more than one left to wait on another): an exchange that never ends.
    stalled = len(seen) > 1 and all(now - mark["work"] > timeout for mark in changed.values())
    culprits = silent or behind
    if not culprits and not stalled:
        return None
    healthy = sorted(r for r in seen if r not in culprits)
    if me != (healthy[0] if healthy else min(seen)):
        return None  # another rank says it
    s = timeout
    if silent:
        return (f"{_ranks(silent)} stopped answering {s:g} s ago (last at {seen[silent[0]][3]}): stopped, "
                f"frozen or its machine gone; ending the job (--rank-timeout {s:g})")
    if behind:
        leader = max(seen, key=lambda r: seen[r][1])
        return (f"{_ranks(behind)} made no progress for {s:g} s at {seen[behind[0]][3]} while the others "
                f"wait at {seen[leader][3]}; ending the job (--rank-timeout {s:g})")
    return (f"every rank has made no progress for {s:g} s (at {seen[min(seen)][3]}): an exchange never "
            f"completed; ending the job (--rank-timeout {s:g})")


def _failed(r: int, at: str) -> str:
    """The line that names rank ``r``, whose post ``at`` says it failed and why."""
    return f"rank {r} failed: {at.removeprefix(FAILED)}; ending the job"


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
