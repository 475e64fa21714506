"""The request queue against a real Redis: at-most-once answers, cancellation, redelivery, load."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

import wire
from gateway.errors import QueueFull
from gateway.queue.signals import WorkSignals
from gateway.queue.stream import RequestQueue
from gateway.relay.messages import Failed, Finished, Token
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.store import keys
from tests.gateway.queue.entries import add_unreadable_entries, queued, read_batch

pytestmark = pytest.mark.integration

MODEL = "tiny"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


def _finished(request_id: str) -> Finished:
    return Finished(id=request_id, result=wire.FinishEvent(id=request_id, text="x", finish_reason="stop", usage=USAGE))


async def test_enqueue_read_settle_once(queue: RequestQueue, redis: Redis) -> None:
    router = ReplyRouter(redis, "replies", {})
    await router.start()
    try:
        with router.expect("a") as inbox:
            await queue.enqueue(MODEL, queued("a"))
            assert (await queue.load(MODEL)).queued == 1
            (delivery,) = await read_batch(queue, MODEL, "c1", 8)
            load = await queue.load(MODEL)
            assert (load.queued, load.in_flight) == (0, 1)
            await ReplySender(redis).publish([("replies", Token(id="a", attempt=1, text="x"))])
            assert await queue.settle(MODEL, delivery, _finished("a"))
            assert not await queue.settle(MODEL, delivery, _finished("a"))  # a duplicate is suppressed
            assert isinstance(await inbox.get(), Token)
            assert isinstance(await inbox.get(), Finished)
            assert inbox.empty()
        assert (await queue.load(MODEL)).demand == 0
        assert isinstance(await queue.final_reply(MODEL, "a"), Finished)
    finally:
        await router.stop()


async def test_queue_full(queue: RequestQueue) -> None:
    for i in range(3):
        await queue.enqueue(MODEL, queued(f"r{i}"))
    with pytest.raises(QueueFull) as info:
        await queue.enqueue(MODEL, queued("r3"))
    assert info.value.status_code == 429 and info.value.retry_after_s


async def _enqueue(queue: RequestQueue, request_id: str) -> str:
    entry = await queue.enqueue(MODEL, queued(request_id))
    assert isinstance(entry, str)
    return entry


async def test_cancelled_request_is_never_dispatched_or_answered(queue: RequestQueue) -> None:
    entry = await _enqueue(queue, "a")
    await queue.enqueue(MODEL, queued("b"))
    assert await queue.cancel(MODEL, "a", entry)
    batch = await read_batch(queue, MODEL, "c1", 8)
    assert [d.queued.id for d in batch] == ["b"]
    assert (await queue.load(MODEL)).demand == 1


async def test_cancel_after_dispatch_suppresses_the_answer(queue: RequestQueue) -> None:
    entry = await _enqueue(queue, "a")
    (delivery,) = await read_batch(queue, MODEL, "c1", 8)
    assert await queue.cancel(MODEL, "a", entry)
    assert not await queue.settle(MODEL, delivery, _finished("a"))
    assert await queue.final_reply(MODEL, "a") is None
    assert (await queue.load(MODEL)).demand == 0


async def test_a_read_drops_the_entries_of_settled_requests(queue: RequestQueue, redis: Redis) -> None:
    await queue.enqueue(MODEL, queued("a"))
    await queue.enqueue(MODEL, queued("b"))
    await queue.cancel(MODEL, "a", "")  # settled, but its entry is still there (e.g. it was requeued meanwhile)
    assert [d.queued.id for d in await read_batch(queue, MODEL, "c1", 8)] == ["b"]
    assert await redis.xlen(keys.queue(MODEL)) == 1  # a's entry is acked and deleted by the read
    assert (await queue.load(MODEL)).demand == 1


async def test_entries_without_a_request_id_field_are_checked_too(queue: RequestQueue, redis: Redis) -> None:
    """Entries queued by a gateway from before the ``i`` field (a rolling upgrade) are filtered all the same."""
    for request_id in ("a", "b"):
        await redis.xadd(keys.queue(MODEL), {"r": queued(request_id).model_dump_json()})
    await queue.cancel(MODEL, "a", "")
    assert [d.queued.id for d in await read_batch(queue, MODEL, "c1", 8)] == ["b"]
    assert (await queue.load(MODEL)).demand == 1


async def test_read_says_when_it_drained_the_queue(queue: RequestQueue) -> None:
    for request_id in ("a", "b", "c"):
        await queue.enqueue(MODEL, queued(request_id))
    first = await queue.read(MODEL, "c1", 2)
    assert [d.queued.id for d in first.deliveries] == ["a", "b"] and not first.drained
    second = await queue.read(MODEL, "c1", 2)
    assert [d.queued.id for d in second.deliveries] == ["c"] and second.drained


async def test_work_is_signalled_locally_and_to_other_gateways(queue: RequestQueue, redis: Redis) -> None:
    here, there = queue.work, WorkSignals("other-gateway")
    router = ReplyRouter(redis, "replies", {keys.WORK: there.received})
    await router.start()
    try:
        heard: list[str] = []
        there.subscribe(heard.append)
        event, elsewhere = here.event(MODEL), there.event(MODEL)
        await queue.enqueue(MODEL, queued("a"))
        assert event.is_set()  # in-process, before the enqueue returned
        async with asyncio.timeout(5):
            await elsewhere.wait()  # over pub/sub
        assert heard == [MODEL]
    finally:
        await router.stop()


async def test_work_a_dispatcher_here_waits_for_does_not_wake_other_gateways(queue: RequestQueue, redis: Redis) -> None:
    here, there = queue.work, WorkSignals("other-gateway")
    router = ReplyRouter(redis, "replies", {keys.WORK: there.received})
    await router.start()
    try:
        heard = asyncio.Event()
        there.subscribe(lambda _model: heard.set())
        elsewhere = there.event(MODEL)
        waiting = asyncio.create_task(here.wait(MODEL, timeout_s=5))  # a dispatcher here, with room
        await asyncio.sleep(0)
        await queue.enqueue(MODEL, queued("a"))
        await waiting  # woken in-process
        async with asyncio.timeout(5):
            await heard.wait()  # the other gateway heard of it (its autoscaler would look) ...
        assert not elsewhere.is_set()  # ... but its dispatchers stay asleep
        await queue.backlog(MODEL)  # more than the dispatcher here takes: now they are woken
        async with asyncio.timeout(5):
            await elsewhere.wait()
    finally:
        await router.stop()


async def test_loads_of_several_models_in_one_round_trip(queue: RequestQueue) -> None:
    await queue.enqueue(MODEL, queued("a"))
    loads = await queue.loads([MODEL, "never-used"])
    assert (loads[MODEL].queued, loads["never-used"].queued, loads["never-used"].idle_for_s) == (1, 0, 0.0)


async def test_requeue_is_the_next_attempt_unless_settled(queue: RequestQueue) -> None:
    await queue.enqueue(MODEL, queued("a"))
    await queue.enqueue(MODEL, queued("b"))
    first = await read_batch(queue, MODEL, "c1", 8)
    await queue.settle(MODEL, first[1], Failed(id="b", status=400, message="bad"))
    assert await queue.requeue(MODEL, first[0])
    assert not await queue.requeue(MODEL, first[1])
    (again,) = await read_batch(queue, MODEL, "c2", 8)
    assert (again.queued.id, again.queued.attempt) == ("a", 2)
    assert (await queue.load(MODEL)).demand == 1


async def test_load_of_an_unused_model(queue: RequestQueue) -> None:
    load = await queue.load("never-used")
    assert (load.queued, load.in_flight, load.idle_for_s) == (0, 0, 0.0)  # idleness starts counting now


async def test_requeue_twice_puts_back_once(queue: RequestQueue) -> None:
    await _enqueue(queue, "a")
    (delivery,) = await read_batch(queue, MODEL, "c1", 8)
    assert await queue.requeue(MODEL, delivery)
    assert not await queue.requeue(MODEL, delivery)
    assert (await queue.load(MODEL)).queued == 1


@pytest.mark.security
async def test_a_read_fails_an_unreadable_entry_alone(queue: RequestQueue, redis: Redis) -> None:
    router = ReplyRouter(redis, "replies", {})
    await router.start()
    try:
        with router.expect("deep") as inbox:
            await queue.enqueue(MODEL, queued("a"))
            await add_unreadable_entries(redis, MODEL)
            await redis.xadd(keys.queue(MODEL), {"r": queued("b").model_dump_json()})  # no "i": checked apart
            read = await queue.read(MODEL, "c1", 8)
            assert [d.queued.id for d in read.deliveries] == ["a", "b"]
            failed = await asyncio.wait_for(inbox.get(), timeout=5)
    finally:
        await router.stop()
    assert isinstance(failed, Failed) and failed.status == 400
    assert await queue.final_reply(MODEL, "deep") == failed
    assert await redis.xlen(keys.queue(MODEL)) == 2  # the unreadable entries are acked and deleted
    load = await queue.load(MODEL)
    assert (load.queued, load.in_flight) == (0, 2)
