"""Dynamic batching: requests that arrive within ``max_delay_ms`` run through the model together.

The event loop never runs the model: each batch goes to the executor it is given (the server's one
model thread), while image decoding runs on a separate pool. The queue is bounded: past
``queue_size`` waiting images a request is refused at once instead of growing memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


class TooLarge(Exception):
    """More items than the queue can ever hold: retrying cannot help."""


class Batcher:
    """``predict`` takes a list of items (an image and how to answer it) and returns one result per
    item; it runs on ``executor``, one batch at a time."""

    def __init__(self, predict: Callable[[list[Any]], list[Any]], executor: Executor, *,
                 max_batch_size: int = 16, max_delay_ms: float = 5.0, queue_size: int = 256,
                 on_batch: Callable[[int], None] | None = None):
        self.predict, self.executor = predict, executor
        self.max_batch_size, self.max_delay = max_batch_size, max_delay_ms / 1000.0
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue(maxsize=queue_size)
        self.on_batch = on_batch
        self.task: asyncio.Task | None = None
        self.incoming = 0  # requests still decoding: images that may join the next batch

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, items: list[Any]) -> list[Any]:
        """The result for each item, in order; raises Overloaded if the queue cannot take them now,
        TooLarge if it never could."""
        if len(items) > self.queue.maxsize:
            raise TooLarge(f"{len(items)} images is over the queue's size of {self.queue.maxsize}")
        if self.queue.maxsize - self.queue.qsize() < len(items):
            raise Overloaded(f"{self.queue.qsize()} images are waiting (limit {self.queue.maxsize})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put_nowait((item, future))
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:  # the request timed out or its client left: drop its items
            for future in futures:
                future.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_delay
            # Wait for company only if some is on its way: a lone request runs at once.
            while len(batch) < self.max_batch_size and (self.incoming or not self.queue.empty()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), min(remaining, 0.001)))
                except asyncio.TimeoutError:
                    continue
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.predict, [item for item, _ in batch])
            except Exception as exc:  # a model failure fails this batch's requests, not the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for result, (_, future) in zip(results, batch):
                if not future.done():
                    future.set_result(result)
