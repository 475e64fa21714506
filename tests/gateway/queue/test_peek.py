"""``RequestQueue.peek``: the loads ``loads`` reads, for a reader that must change nothing (``status``)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.queue.stream import RequestQueue
from gateway.store import keys
from tests.gateway.queue.entries import queued

pytestmark = pytest.mark.integration


async def test_peek_reads_what_loads_reads_and_marks_no_model_active(queue: RequestQueue, redis: Redis) -> None:
    await queue.enqueue("m", queued("r1"))
    await queue.enqueue("m", queued("r2"))
    assert await redis.delete(keys.activity("m")) == 1  # as if never used
    peeked = await queue.peek(["m", "unused"])
    assert (peeked["m"].queued, peeked["m"].in_flight, peeked["m"].idle_for_s) == (2, 0, None)
    assert peeked["unused"].demand == 0 and peeked["unused"].idle_for_s is None
    assert not await redis.exists(keys.activity("m"), keys.activity("unused"))  # nothing written
    loaded = await queue.loads(["m"])
    assert (loaded["m"].queued, loaded["m"].idle_for_s) == (2, 0.0)
    assert await redis.exists(keys.activity("m"))  # where loads, unlike peek, marks it active
