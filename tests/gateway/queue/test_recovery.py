"""The janitor and its take-over against a real Redis: a dead gateway's work handed back, unreadable entries
failed, a live one's held entries left alone."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.catalog import ModelCatalog
from gateway.metrics import Metrics
from gateway.queue.recovery import Abandoned, Heartbeats, Janitor, Takeover
from gateway.queue.stream import RequestQueue
from gateway.relay.messages import Failed
from gateway.settings import ModelSettings, QueueSettings
from gateway.store import keys
from gateway.store.connection import connect
from tests.gateway.queue.entries import add_unreadable_entries, queued, read_batch
from wire.redis_url import RedisClient

pytestmark = pytest.mark.integration

MODEL = "tiny"


def _janitor(queue: RequestQueue, redis: RedisClient, models: list[str], metrics: Metrics | None = None) -> Janitor:
    """The janitor of the live gateway "live", for ``models``, where every request is still waited for; it tells
    ``metrics`` whether Redis answers its heartbeats."""
    return Janitor(
        queue=queue,
        takeover=Takeover(redis, queue),
        heartbeats=Heartbeats(redis),
        redis_up=(metrics or Metrics()).redis_up.set,
        catalog=ModelCatalog([ModelSettings(name=model) for model in models]),
        gateway_id="live",
        interval_s=1,
        held=lambda _model: (),
        is_waiting=lambda _id: True,
        abandoned=Abandoned(),
    )


async def test_janitor_hands_back_the_work_of_a_dead_gateway(queue: RequestQueue, redis: Redis) -> None:
    live = _janitor(queue, redis, [MODEL])
    await live.start()
    for request_id, accepted_by in (("mine", "live"), ("orphan", "dead")):
        await queue.enqueue(MODEL, queued(request_id).model_copy(update={"gateway": accepted_by}))
    assert len(await read_batch(queue, MODEL, "dead", 8)) == 2  # then "dead" died: no heartbeat

    await live.pass_once()

    (again,) = await read_batch(queue, MODEL, "live", 8)
    # Back in the queue as a new attempt (its tokens start again), not counted as a failure.
    assert (again.queued.id, again.queued.attempt, again.queued.failures) == ("mine", 2, 0)
    assert await queue.final_reply(MODEL, "orphan") is None  # nobody waits for it: cancelled
    assert (await queue.load(MODEL)).demand == 1
    assert (await queue.consumers_of([MODEL]))[MODEL].get("dead", 0) == 0
    await live.pass_once()
    assert "dead" not in (await queue.consumers_of([MODEL]))[MODEL]
    await live.stop()


async def test_redis_up_says_whether_the_last_heartbeat_reached_redis(queue: RequestQueue, redis: Redis) -> None:
    """``kaltstart_redis_up``, which the KaltstartRedisUnreachable alert watches, follows every heartbeat."""
    metrics = Metrics()

    def up() -> float | None:
        return metrics.registry.get_sample_value("kaltstart_redis_up")

    live = _janitor(queue, redis, [MODEL], metrics)
    await live.start()
    assert up() == 1
    nowhere = connect("redis://127.0.0.1:1", QueueSettings())  # nothing listens there: connection refused
    cut_off = _janitor(RequestQueue(redis=nowhere, max_queue_per_model=3), nowhere, [MODEL], metrics)
    await cut_off.pass_once()
    assert up() == 0
    await live.pass_once()
    assert up() == 1
    await live.stop()
    await nowhere.aclose()


@pytest.mark.security
async def test_the_janitor_fails_an_unreadable_entry_and_sweeps_on(queue: RequestQueue, redis: Redis) -> None:
    """A dead gateway held an unreadable entry beside readable ones: those are handed back, the unreadable one
    failed, and the models after it are swept all the same."""
    janitor = _janitor(queue, redis, [MODEL, "other"])
    await queue.prepare("other")
    await queue.enqueue(MODEL, queued("a"))  # first: the queue takes 3, and the entries below bypass it
    await add_unreadable_entries(redis, MODEL)
    await queue.enqueue("other", queued("b"))
    for model in (MODEL, "other"):  # as the dead gateway's reads did: all of them are in flight
        await redis.xreadgroup(keys.GROUP, "dead", {keys.queue(model): ">"})

    await janitor.pass_once()

    assert isinstance(await queue.final_reply(MODEL, "deep"), Failed)
    assert [d.queued.id for d in await read_batch(queue, MODEL, "live", 8)] == ["a"]
    assert [d.queued.id for d in await read_batch(queue, "other", "live", 8)] == ["b"]
    assert await redis.xlen(keys.queue(MODEL)) == 1


async def test_a_take_over_leaves_the_entries_it_is_told_to_skip(queue: RequestQueue, redis: Redis) -> None:
    for request_id in ("held", "stray"):
        await queue.enqueue(MODEL, queued(request_id))
    held, stray = await read_batch(queue, MODEL, "gw", 8)
    takeover = Takeover(redis, queue)
    assert await takeover.take_over(MODEL, "gw", "gw", min_idle_s=60.0) == []  # none idle that long
    taken = await takeover.take_over(MODEL, "gw", "janitor", skip={held.entry_id})
    assert [d.entry_id for d in taken] == [stray.entry_id]
    assert (await queue.consumers_of([MODEL]))[MODEL] == {"gw": 1, "janitor": 1}
