"""The dispatch loop against a real Redis, with the runtime replaced by an ``httpx.MockTransport`` answering
``POST /v1/batch`` in the wire format (``fakes``): which replica a batch goes to, and when."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from gateway.queue.signals import WorkSignals
from gateway.relay.transport import ReplyRouter
from gateway.store import keys
from tests.gateway.dispatch.fakes import MODEL, R1, R2, SETTINGS, Answer, HeldStream, Rig, answering, echo
from tests.gateway.replicas.watched import looked_up

pytestmark = pytest.mark.integration


async def test_a_continuous_replica_gets_requests_at_once_without_a_batch_window(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(answering(echo), dataclasses.replace(SETTINGS, max_batch_delay_s=30.0))
    rig.runtime.scheduler = "continuous"
    await rig.enqueue("a")
    async with asyncio.timeout(10):  # not the 30 s window
        await rig.dispatcher.step()
        await rig.runtime.wait_for_batches(1)
    await rig.dispatcher.drain(5)
    assert [[r.id for r in body.requests] for _url, body in rig.runtime.batches] == [["a"]]


async def test_a_batch_goes_to_the_runtime_in_one_post(make_rig: Callable[[Answer], Rig]) -> None:
    rig = make_rig(answering(echo))
    for request_id in ("a", "b", "c"):
        await rig.enqueue(request_id)
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    ((url, body),) = rig.runtime.batches
    assert url == R1
    assert body.model == MODEL
    assert [r.id for r in body.requests] == ["a", "b", "c"]
    assert rig.metrics.registry.get_sample_value("kaltstart_batch_size_sum", {"model": MODEL}) == 3


async def test_a_batch_waits_for_a_ready_replica(make_rig: Callable[[Answer], Rig]) -> None:
    rig = make_rig(answering(echo))
    rig.endpoints.set(MODEL, [])
    await rig.enqueue("a")
    looked = rig.endpoints.next_lookup()
    step = asyncio.create_task(rig.dispatcher.step())
    await looked_up(looked)  # it found no ready replica, and waits for one
    assert not step.done()
    rig.endpoints.set(MODEL, [R2])
    await asyncio.wait_for(step, 5)
    await rig.dispatcher.drain(5)
    assert [url for url, _ in rig.runtime.batches] == [R2]


async def test_a_continuous_replica_gets_more_work_while_its_batch_runs(make_rig: Callable[[Answer], Rig]) -> None:
    release = asyncio.Event()
    rig = make_rig(lambda batch: httpx.Response(200, stream=HeldStream(echo(batch), release)))
    rig.runtime.scheduler = "continuous"
    await rig.enqueue("first")
    await rig.dispatcher.step()  # sent; its answer is held open: the batch runs on
    await rig.enqueue("second")
    await rig.dispatcher.step()  # sent to the same replica at once, not after the first batch
    await rig.runtime.wait_for_batches(2)  # both sent while the first is still running
    assert sorted(r.id for _, body in rig.runtime.batches for r in body.requests) == ["first", "second"]
    release.set()
    await rig.dispatcher.drain(5)
    assert await rig.queue.final_reply(MODEL, "second") is not None


async def test_a_static_replica_gets_its_next_batch_only_after_the_last(make_rig: Callable[[Answer], Rig]) -> None:
    release = asyncio.Event()
    rig = make_rig(lambda batch: httpx.Response(200, stream=HeldStream(echo(batch), release)))
    await rig.enqueue("first")
    await rig.dispatcher.step()
    await rig.runtime.wait_for_batches(1)
    await rig.enqueue("second")
    looked = rig.endpoints.next_lookup()
    waiting = asyncio.create_task(rig.dispatcher.step())
    await looked_up(looked)  # it looked for room, found R1 busy with the first batch, and waits
    assert len(rig.runtime.batches) == 1 and not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 5)
    await rig.runtime.wait_for_batches(2)
    assert [[r.id for r in body.requests] for _, body in rig.runtime.batches] == [["first"], ["second"]]
    await rig.dispatcher.drain(5)


async def test_a_read_that_leaves_work_behind_wakes_the_other_gateways(
    make_rig: Callable[..., Rig], redis: Redis
) -> None:
    other = WorkSignals("other-gateway")
    router = ReplyRouter(redis, "replies:other", {keys.WORK: other.received})
    await router.start()
    try:
        rig = make_rig(answering(echo), dataclasses.replace(SETTINGS, max_batch_size=1))
        woken, heard = other.event(MODEL), asyncio.Queue[str]()
        other.subscribe(heard.put_nowait)
        await rig.enqueue("a")
        await rig.enqueue("b")
        async with asyncio.timeout(5):
            for _ in ("a", "b"):  # both enqueues heard there (no dispatcher waited here) ...
                await heard.get()
        assert woken.is_set()
        woken.clear()  # ... so no late message of theirs can set it again
        await rig.dispatcher.step()  # takes "a", the one it has room for; "b" is left
        async with asyncio.timeout(5):
            await woken.wait()
        await rig.dispatcher.drain(5)
    finally:
        await router.stop()


async def test_an_entry_delivered_again_after_a_redis_failover_is_not_sent_twice(
    make_rig: Callable[[Answer], Rig], redis: Redis
) -> None:
    """A failover can lose the read that delivered an entry (replication is asynchronous): the new primary then
    delivers it again, as new, while its batch still runs. Rewinding the group's last-delivered id does to the
    stream what such a failover does."""
    release = asyncio.Event()
    rig = make_rig(lambda batch: httpx.Response(200, stream=HeldStream(echo(batch), release)))
    rig.runtime.scheduler = "continuous"
    await rig.enqueue("first")
    await rig.dispatcher.step()  # sent; its answer is held open
    await rig.runtime.wait_for_batches(1)
    await redis.xgroup_setid(keys.queue(MODEL), keys.GROUP, "0")  # "first" is new again to the group
    await rig.enqueue("second")
    await rig.dispatcher.step()
    await rig.runtime.wait_for_batches(2)
    assert [[r.id for r in body.requests] for _, body in rig.runtime.batches] == [["first"], ["second"]]
    release.set()
    await rig.dispatcher.drain(5)
    assert await rig.queue.final_reply(MODEL, "first") is not None
    assert await redis.xlen(keys.queue(MODEL)) == 0  # its one entry settled and gone
