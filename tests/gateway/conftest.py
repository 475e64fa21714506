"""Fixtures of the gateway tests that talk to a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.queue.stream import RequestQueue

#: The model most queue tests use.
MODEL = "tiny"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the wiped test server."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(redis: Redis) -> RequestQueue:
    """A small queue (3 per model) whose ``MODEL`` stream and group exist."""
    q = RequestQueue(redis=redis, max_queue_per_model=3)
    await q.prepare(MODEL)
    return q
