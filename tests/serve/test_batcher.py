"""Dynamic batching on its own: batches form from concurrent submissions, the queue is bounded."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from dogbreed.serve.batcher import Batcher, Overloaded, TooLarge


def test_concurrent_items_share_a_batch_and_come_back_in_order():
    seen = []

    def predict(items):
        seen.append(list(items))
        return [item * 10 for item in items]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(predict, pool, max_batch_size=8, max_delay_ms=50, queue_size=16)
            batcher.start()
            batcher.incoming = 1  # a request still decoding: the batch waits for it, up to 50 ms
            results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
            await batcher.stop()
            return results

    assert asyncio.run(main()) == [[10, 20], [30]]
    assert seen == [[1, 2, 3]]


def test_a_request_the_queue_can_never_hold_is_told_so_not_to_retry():
    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda items: items, pool, queue_size=2)
            with pytest.raises(TooLarge, match="3 images is over the queue's size of 2"):
                await batcher.submit([1, 2, 3])
            batcher.queue.put_nowait((0, asyncio.get_running_loop().create_future()))  # one waiting already
            with pytest.raises(Overloaded):
                await batcher.submit([1, 2])

    asyncio.run(main())
