"""Work on a thread pool, its results in order, a bounded number ahead: how the batch paths
(``dogbreed transform``, the monitor's ``observe``, ``dogbreed predict``) keep reading and JPEG
decoding off the network's thread, so that the network never waits on them.

Written here because ``Executor.map`` submits every item at once: for 50,000 photos it would hold
every decoded image in memory before the network took the first. PIL releases the GIL while it
decodes, so threads run in parallel with each other and with the network's own threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered(items: Iterable[T], work: Callable[[T], R], pool: Executor, ahead: int) -> Iterator[R]:
    """``work(item)`` for every item on ``pool``, yielded in the items' order, with at most
    ``ahead`` submitted and not yet taken. ``work`` should catch what it can answer for: an
    exception it raises comes out of this generator, at its item's turn. Closing the generator
    early cancels what has not started."""
    source = iter(items)
    pending: deque = deque()

    def submit(n: int) -> None:
        pending.extend(pool.submit(work, item) for item in islice(source, n))

    try:
        submit(max(1, ahead))
        while pending:
            result = pending.popleft().result()
            submit(1)  # the pool stays busy while the caller works on this result
            yield result
    finally:
        for future in pending:
            future.cancel()


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), as they come."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
