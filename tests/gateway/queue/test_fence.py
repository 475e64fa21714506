"""The scale-down fence against a real Redis: taken only when idle, requests wait at the door until it is lifted."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

import wire
from gateway.queue.fence import FENCE_TTL_S, Fence, Fenced, FencedDoor
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.messages import Finished
from gateway.relay.transport import ReplyRouter
from gateway.store import keys
from tests.gateway.queue.entries import read_batch

pytestmark = pytest.mark.integration

MODEL = "tiny"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
#: Longest a waiting request may take to get in once the fence is lifted: a fifth of the TTL, so that a lift nobody
#: hears (the request gets in only when the fence expires) fails the test.
LIFT_HEARD_S = FENCE_TTL_S / 5


def _queued(request_id: str) -> QueuedRequest:
    return QueuedRequest(
        request=wire.GenerationRequest(id=request_id, prompt="hi"), reply_to="replies", accepted_at=time.time()
    )


async def test_fence_is_taken_only_when_idle(queue: RequestQueue, redis: Redis) -> None:
    fence = Fence(redis, ttl_s=5)
    await queue.enqueue(MODEL, _queued("a"))
    async with fence.hold([MODEL], idle_s=0) as held:
        assert not held  # something is queued
    (delivery,) = await read_batch(queue, MODEL, "c1", 8)
    async with fence.hold([MODEL], idle_s=0) as held:
        assert not held  # something is in flight
    result = wire.FinishEvent(id="a", text="x", finish_reason="stop", usage=USAGE)
    await queue.settle(MODEL, delivery, Finished(id="a", result=result))
    async with fence.hold([MODEL], idle_s=60) as held:
        assert not held  # active just now
    async with fence.hold([MODEL], idle_s=0) as held:
        assert held
        async with fence.hold([MODEL], idle_s=0) as again:
            assert not again  # held already
    assert not await redis.exists(keys.fence(MODEL))  # lifted when the block was left


async def test_a_unit_is_fenced_whole_or_not_at_all(queue: RequestQueue, redis: Redis) -> None:
    await queue.enqueue("busy", _queued("b"))
    async with Fence(redis).hold([MODEL, "busy"], idle_s=0) as held:
        assert not held
        assert not await redis.exists(keys.fence(MODEL))  # the idle one was let go at once


async def test_requests_wait_at_a_fence_until_it_is_lifted(queue: RequestQueue, redis: Redis) -> None:
    door = FencedDoor()
    router = ReplyRouter(redis, "replies", {keys.FENCES: door.lifted})
    await router.start()
    fence = Fence(redis)  # the production TTL: a lift that is not heard would let the request in only after it
    try:
        async with fence.hold([MODEL], idle_s=0) as held:
            assert held
            fenced = await queue.enqueue(MODEL, _queued("a"))
            assert isinstance(fenced, Fenced) and 0 < fenced.seconds_left <= FENCE_TTL_S
            assert (await queue.load(MODEL)).demand == 0
            await fence._release(MODEL, "wrong token")
            assert isinstance(await queue.enqueue(MODEL, _queued("a")), Fenced)
            started_waiting = asyncio.Event()
            door.subscribe(lambda _model: started_waiting.set())
            waiting = asyncio.create_task(door.enter(MODEL, lambda: queue.enqueue(MODEL, _queued("a"))))
            await asyncio.wait_for(started_waiting.wait(), timeout=5)  # it tried once and was fenced out
            assert not waiting.done()
        # Woken by the lift's message, well before the TTL: a request must not stall for it at every scale-down.
        entry, waited = await asyncio.wait_for(waiting, timeout=LIFT_HEARD_S)
        assert isinstance(entry, str) and waited
    finally:
        await router.stop()
