"""Fault tests: real Valkey, real gateway and runtime processes, and a fault injected on purpose (a burst, a
Redis stop, a client that leaves, a request that crashes its replica). Each test ends by checking the promise:
every request answered once or clearly refused, nothing left in Redis, the model back at zero replicas."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.queue.stream import RequestQueue
from tests.harness import LocalGateway


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


async def assert_nothing_left(redis_url: str, model: str) -> None:
    """No entry queued or in flight for ``model``."""
    redis = Redis.from_url(redis_url)
    try:
        load = await RequestQueue(redis=redis, max_queue_per_model=1).load(model)
    finally:
        await redis.aclose()
    assert (load.queued, load.in_flight) == (0, 0)


async def assert_back_at_zero(gw: LocalGateway, model: str, timeout_s: float = 30) -> None:
    await gw.wait_for(lambda: gw.backend.replicas(model).desired == 0, timeout_s=timeout_s)
