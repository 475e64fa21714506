"""The gateway's Redis client behind Sentinel (``redis+sentinel://``), across a real failover (a primary killed with
SIGKILL, its replica promoted): commands, scripts (``NOSCRIPT`` on the new primary) and the pub/sub subscription all
follow the new primary."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import QueueUnavailable
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.transport import ReplyRouter
from gateway.settings import QueueSettings
from gateway.store import keys
from gateway.store.connection import connect
from tests.sentinels import SentinelDeployment
from wire import GenerationRequest

pytestmark = pytest.mark.integration


def _queued(i: int) -> QueuedRequest:
    request = GenerationRequest(id=f"r{i}", prompt="x")
    return QueuedRequest(request=request, reply_to="kaltstart:replies:g", accepted_at=0)


async def test_queue_and_subscription_follow_the_new_primary(sentinels: SentinelDeployment) -> None:
    redis = connect(sentinels.url, QueueSettings(redis_timeout_s=2.0))
    queue = RequestQueue(redis=redis, max_queue_per_model=100)
    subscribed = asyncio.Event()
    heard: asyncio.Queue[str] = asyncio.Queue()
    router = ReplyRouter(redis, keys.replies("g"), {"test:broadcast": heard.put_nowait})
    router.on_subscribed(subscribed.set)
    await router.start()
    try:
        await queue.prepare("m")
        await queue.enqueue("m", _queued(1))  # loads the script on the first primary
        async with sentinels.switch_master() as switched:
            subscribed.clear()
            sentinels.kill(sentinels.primary)
            await asyncio.wait_for(switched.wait(), 30)
        assert (await sentinels.current_primary()) is sentinels.replica
        # The new primary never saw the script (replicas do not share the script cache): NOSCRIPT, loaded, run.
        async with asyncio.timeout(10):
            while True:  # the first commands may still meet the failover (the pool's connections to the old one)
                try:
                    await queue.enqueue("m", _queued(2))
                    break
                except QueueUnavailable:  # while the pool moves over
                    await asyncio.sleep(0.1)
        assert (await queue.load("m")).queued == 2  # the entry from before the failover was replicated
        await asyncio.wait_for(subscribed.wait(), 10)  # the router subscribed again, on the new primary
        await redis.publish("test:broadcast", "after")
        assert await asyncio.wait_for(heard.get(), 5) == "after"
    finally:
        await router.stop()
        await redis.aclose()
