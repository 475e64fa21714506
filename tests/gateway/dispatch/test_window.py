"""The batching window against a real Redis: a read waits for a fuller batch only for a static replica, and only
while its oldest request is younger than the window."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from gateway.dispatch.window import read_filled, window_s
from gateway.queue.stream import Read, RequestQueue
from gateway.settings import ModelSettings
from tests.gateway.queue.entries import queued, read_batch

MODEL = "tiny"


class ObservedQueue(RequestQueue):
    """A queue that says when a read has returned."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis=redis, max_queue_per_model=3)
        self.has_read = asyncio.Event()

    async def read(self, model: str, consumer: str, count: int) -> Read:
        read = await super().read(model, consumer, count)
        self.has_read.set()
        return read


@pytest.mark.unit
def test_a_continuous_replica_gets_no_window() -> None:
    settings = ModelSettings(name=MODEL, max_batch_delay_s=0.05)
    assert window_s(settings, continuous=False) == 0.05
    assert window_s(settings, continuous=True) == 0.0


@pytest.mark.integration
async def test_batches_fill_up_to_the_limit(queue: RequestQueue) -> None:
    for i in range(3):
        await queue.enqueue(MODEL, queued(f"r{i}"))
    batch = (await read_filled(queue, MODEL, "c1", 2, fill_s=0.05)).deliveries
    assert [d.queued.id for d in batch] == ["r0", "r1"]
    assert [d.queued.id for d in await read_batch(queue, MODEL, "c2", 2)] == ["r2"]


@pytest.mark.integration
async def test_a_backlog_goes_at_once_without_a_window(queue: RequestQueue) -> None:
    old = queued("old")
    await queue.enqueue(MODEL, old.model_copy(update={"accepted_at": time.time() - 60}))
    async with asyncio.timeout(5):  # not the 30 s window: the request waited that long already
        read = await read_filled(queue, MODEL, "c1", 8, fill_s=30.0)
    assert [d.queued.id for d in read.deliveries] == ["old"]


@pytest.mark.integration
async def test_a_read_cancelled_in_its_window_puts_its_batch_back(redis: Redis) -> None:
    queue = ObservedQueue(redis)
    await queue.prepare(MODEL)
    await queue.enqueue(MODEL, queued("a"))
    reading = asyncio.create_task(read_filled(queue, MODEL, "c1", 8, fill_s=30.0))
    async with asyncio.timeout(5):
        await queue.has_read.wait()  # "a" is read: the window of 30 s begins
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    (again,) = await read_batch(queue, MODEL, "c2", 8)
    assert (again.queued.id, again.queued.attempt, again.queued.failures) == ("a", 2, 0)
