"""The byte budget and the per-key quotas against a real Redis (``gateway.queue.budget``): a request's prompt stored
once
whatever its ``n``, accounts per model and per key refused atomically at enqueue and released by the last settle,
charges nobody releases lapsing, nothing left in Redis once a request is answered, cancelled or lapsed, and new work
refused near ``maxmemory`` while settles go on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

import wire
from gateway.errors import KeyQuotaExceeded, QueueFull, QueueMemoryFull
from gateway.queue.budget import Account, MemoryGuard
from gateway.queue.recovery import Takeover
from gateway.queue.stream import Delivery, QueuedRequest, RequestQueue, Stored
from gateway.relay.messages import Failed, Finished
from gateway.store import keys
from gateway.store.embedded import EmbeddedRedis
from tests.clusters import ClusterDeployment
from tests.gateway.queue.entries import read_batch
from wire.redis_url import PoolLimits, RedisClient, client

pytestmark = [pytest.mark.integration, pytest.mark.security]

MODEL = "tiny"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
KIB = 1 << 10
MIB = 1 << 20


@pytest.fixture(params=["one", "cluster"])
async def redis(
    request: pytest.FixtureRequest, redis_url: str, cluster_deployment: ClusterDeployment
) -> AsyncIterator[RedisClient]:
    """A client of one Redis, then of a Redis Cluster (wiped), where an API key's charge is a step of its own
    (``gateway.queue.keycharges``): every promise here holds on both."""
    redis = client(redis_url if request.param == "one" else cluster_deployment.url, PoolLimits(timeout_s=5))
    if isinstance(redis, RedisCluster):
        await redis.flushdb(target_nodes=RedisCluster.PRIMARIES)
    yield redis
    await redis.aclose()


def _request(request_id: str, n: int = 1, prompt: str = "hi", account: Account | None = None) -> Stored:
    """A client request of ``n`` choices of one ``prompt``, as ``choices.fan_out`` makes them."""
    ids = [request_id] if n == 1 else [f"{request_id}-{j}" for j in range(n)]
    choices = [
        QueuedRequest(
            request=wire.GenerationRequest(id=i, prompt=prompt, params=wire.SamplingParams(seed=j)),
            reply_to="replies",
            accepted_at=time.time(),
        )
        for j, i in enumerate(ids)
    ]
    return Stored.of(choices, n, account)


@pytest.fixture
async def queue(redis: RedisClient) -> RequestQueue:
    """A queue whose ``MODEL`` stream and group exist, with room for any test's entries."""
    q = RequestQueue(redis=redis, max_queue_per_model=1000)
    await q.prepare(MODEL)
    return q


def _account(**limits: int) -> Account:
    return Account("acct-a", "team-a", **({"max_requests": 100, "max_entries": 100, "max_bytes": 64 * MIB} | limits))


def _finished(request_id: str) -> Finished:
    return Finished(id=request_id, result=wire.FinishEvent(id=request_id, text="x", finish_reason="stop", usage=USAGE))


async def _enqueued(queue: RequestQueue, stored: Stored) -> list[str]:
    entries = await queue.enqueue_stored(MODEL, stored)
    assert isinstance(entries, list)
    return entries


async def _answer_all(queue: RequestQueue) -> list[Delivery]:
    """Read every queued entry and settle it with a final reply, as a dispatcher would."""
    batch = await read_batch(queue, MODEL, "dispatcher", 1000)
    for delivery in batch:
        assert await queue.settle(MODEL, delivery, _finished(delivery.queued.id))
    return batch


async def _left_behind(redis: RedisClient) -> list[str]:
    """Keys that hold a request's body or a charge (settled markers, the stream and its activity stay by design)."""
    names = [key.decode() async for key in redis.scan_iter(match="kaltstart:*")]
    return sorted(n for n in names if n.split(":")[-2:-1] == ["body"] or n.endswith((":held", ":usage")))


async def _stored_bytes(redis: RedisClient) -> int:
    """What every key of the gateway takes in Redis (``MEMORY USAGE``, exact)."""
    names = [key async for key in redis.scan_iter(match="kaltstart:*")]
    return sum([int(await redis.memory_usage(name, samples=0) or 0) for name in names])


async def _used_memory(redis: RedisClient) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def test_a_prompt_is_stored_once_however_many_choices(queue: RequestQueue, redis: RedisClient) -> None:
    prompt = "x" * (512 * KIB)
    await _enqueued(queue, _request("wide", n=16, prompt=prompt))
    stored = await _stored_bytes(redis)
    assert stored < 1.2 * len(prompt), f"n=16 of a 512 KiB prompt took {stored / MIB:.1f} MiB of Redis"

    batch = await read_batch(queue, MODEL, "dispatcher", 100)
    assert [d.queued.id for d in batch] == [f"wide-{j}" for j in range(16)]
    assert all(_generation(d).prompt == prompt for d in batch)  # each choice is its whole request again
    assert [_generation(d).params.seed for d in batch] == list(range(16))


async def test_nothing_is_left_once_requests_are_answered_or_cancelled(queue: RequestQueue, redis: RedisClient) -> None:
    account = _account()
    await _enqueued(queue, _request("answered", n=3, account=account))
    cancelled = _request("cancelled", n=2, account=account)
    entries = await _enqueued(queue, cancelled)
    assert await _left_behind(redis)  # bodies and charges while they wait

    for choice, entry_id in zip(cancelled.choices, entries, strict=True):  # their client left
        assert await queue.cancel(MODEL, choice.id, entry_id, cancelled.held)
    answered = await _answer_all(queue)
    assert [d.queued.id for d in answered] == [f"answered-{j}" for j in range(3)]
    assert await _left_behind(redis) == []
    assert (await queue.load(MODEL)).demand == 0


async def test_a_redelivered_choice_keeps_its_body(queue: RequestQueue, redis: RedisClient) -> None:
    await _enqueued(queue, _request("again", n=2, prompt="once more"))
    first = await read_batch(queue, MODEL, "dispatcher", 100)
    assert await queue.settle(MODEL, first[0], _finished(first[0].queued.id))
    assert await queue.requeue(MODEL, first[1])  # its replica failed: the body must still be there
    (redelivered,) = await read_batch(queue, MODEL, "dispatcher", 100)
    assert _generation(redelivered).prompt == "once more" and redelivered.queued.attempt == 2
    taken = await Takeover(redis, queue).take_over(MODEL, "dispatcher", "janitor")  # and so does a janitor's take-over
    assert [_generation(d).prompt for d in taken] == ["once more"]
    assert await queue.settle(MODEL, taken[0], _finished(taken[0].queued.id))
    assert await _left_behind(redis) == []


async def test_the_model_byte_budget_refuses_then_frees(redis: RedisClient) -> None:
    queue = RequestQueue(redis=redis, max_queue_per_model=1000, max_bytes_per_model=MIB)
    await queue.prepare(MODEL)
    await _enqueued(queue, _request("big", prompt="x" * (600 * KIB)))
    with pytest.raises(QueueFull) as refused:
        await queue.enqueue_stored(MODEL, _request("bigger", prompt="y" * (600 * KIB)))
    assert refused.value.status_code == 429 and refused.value.retry_after_s
    assert "bytes" in refused.value.message
    await _enqueued(queue, _request("small", prompt="z" * KIB))  # what fits still goes in
    await _answer_all(queue)
    await _enqueued(queue, _request("bigger", prompt="y" * (600 * KIB)))  # the budget was released


async def test_key_quotas_refuse_then_free(queue: RequestQueue, redis: RedisClient) -> None:
    other = Account("acct-b", "team-b", 2, 100, MIB)
    for quota, account, requests in [
        ("requests", _account(max_requests=2), [_request(f"r{i}") for i in range(3)]),
        ("entries", _account(max_entries=5), [_request(f"e{i}", n=3) for i in range(2)]),
        ("bytes", _account(max_bytes=MIB), [_request(f"b{i}", prompt="x" * (600 * KIB)) for i in range(2)]),
    ]:
        *fits, over = [Stored.of(list(r.choices), len(r.choices), account) for r in requests]
        for stored in fits:
            await _enqueued(queue, stored)
        with pytest.raises(KeyQuotaExceeded) as refused:
            await queue.enqueue_stored(MODEL, over)
        assert (refused.value.status_code, refused.value.quota) == (429, quota)
        assert refused.value.retry_after_s
        await _enqueued(queue, _request(f"other-{quota}", account=other))  # another key is not held back
        await _answer_all(queue)
        await _enqueued(queue, over)  # released by the answers
        await _answer_all(queue)
    assert await _left_behind(redis) == []


async def test_a_charge_nobody_releases_lapses(redis: RedisClient) -> None:
    """A gateway that dies between enqueue and settle leaves no quota held for ever: the body and its charges
    lapse at the request's deadline, and a lapsed entry is failed for its own request, never sent."""
    queue = RequestQueue(redis=redis, max_queue_per_model=1000, hold_s=0.3)
    await queue.prepare(MODEL)
    account = _account(max_requests=1)
    await _enqueued(queue, _request("forgotten", account=account))
    with pytest.raises(KeyQuotaExceeded):
        await queue.enqueue_stored(MODEL, _request("next", account=account))
    await asyncio.sleep(0.4)  # the deadline itself is what is tested: nothing to wait on
    await _enqueued(queue, _request("next", account=account))  # the forgotten charge lapsed
    batch = await read_batch(queue, MODEL, "dispatcher", 100)
    assert [d.queued.id for d in batch] == ["next"]  # "forgotten" was failed, not delivered
    reply = await queue.final_reply(MODEL, "forgotten")
    assert isinstance(reply, Failed) and reply.status == 504
    assert await queue.settle(MODEL, batch[0], _finished("next"))
    assert await _left_behind(redis) == []


def _too_deep(request_id: str) -> str:
    """A prompt as a gateway that did not bound schemas could store it: its tool schema nests past the queue
    reader's limit (200 levels), though the standard library's decoder reads it."""
    schema: dict[str, object] = {"type": "object"}
    for _ in range(120):
        schema = {"type": "object", "properties": {"a": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    return json.dumps({"id": request_id, "messages": [{"role": "user", "content": "hi"}], "tools": tools})


@pytest.mark.parametrize("reader", ["dispatcher", "janitor"])
async def test_a_request_that_cannot_be_read_back_fails_alone_and_leaves_nothing(
    queue: RequestQueue, redis: RedisClient, reader: str
) -> None:
    """A request whose stored prompt nests past the reader's limit, and an entry whose ``q`` is not one: each
    request fails with 400 (every choice), through the settle that deletes its body and releases its charges;
    the requests read with them are dispatched."""
    account = _account()
    await _enqueued(queue, _request("before", account=account))
    deep = _request("deep", n=3, account=account)
    await _enqueued(queue, deep)
    await redis.hset(keys.body(MODEL, deep.id), "0", _too_deep(deep.id))  # as such a gateway stored it
    garbled = _request("garbled", account=account)
    await redis.xdel(keys.queue(MODEL), *await _enqueued(queue, garbled))
    entry = garbled.choices[0].entry().model_dump(mode="json") | {"seed": "not a seed"}
    await redis.xadd(keys.queue(MODEL), {"q": json.dumps(entry), "b": garbled.id, "p": 0, "i": "garbled"})
    await _enqueued(queue, _request("after", account=account))

    if reader == "dispatcher":
        batch = await read_batch(queue, MODEL, "dispatcher", 100)
    else:  # a dead gateway's read left them all in flight
        await redis.xreadgroup(keys.GROUP, "dead", {keys.queue(MODEL): ">"})
        batch = await Takeover(redis, queue).take_over(MODEL, "dead", "janitor")

    assert [d.queued.id for d in batch] == ["before", "after"]
    for request_id in [*(c.id for c in deep.choices), "garbled"]:
        reply = await queue.final_reply(MODEL, request_id)
        assert isinstance(reply, Failed) and reply.status == 400, request_id
    for delivery in batch:
        assert await queue.settle(MODEL, delivery, _finished(delivery.queued.id))
    assert await _left_behind(redis) == []
    assert (await queue.load(MODEL)).demand == 0


@pytest.fixture
async def small_redis() -> AsyncIterator[Redis]:
    """A Valkey of its own with a small ``maxmemory`` and ``noeviction``, as the chart's bundled Redis is set."""
    with EmbeddedRedis() as url:
        client = Redis.from_url(url)
        await client.config_set("maxmemory", str(16 * MIB))
        await client.config_set("maxmemory-policy", "noeviction")
        yield client
        await client.aclose()


async def test_new_work_is_refused_near_maxmemory_but_settles_go_on(small_redis: RedisClient) -> None:
    queue = RequestQueue(redis=small_redis, max_queue_per_model=1000, max_bytes_per_model=1 << 40)
    await queue.prepare(MODEL)
    guard = MemoryGuard(small_redis, high_water=0.85)
    waiting = _request("waiting")
    await guard.check()
    await _enqueued(queue, waiting)
    (delivery,) = await read_batch(queue, MODEL, "dispatcher", 10)

    refused = 0
    for i in range(64):  # 512 KiB requests until the guard says no, as the gateway asks it before each enqueue
        try:
            await MemoryGuard(small_redis, high_water=0.85).check()
        except QueueMemoryFull as exc:
            assert (exc.status_code, exc.retry_after_s) == (503, 5)
            refused += 1
            break
        await _enqueued(queue, _request(f"filler-{i}", prompt="x" * (512 * KIB)))
    assert refused, "the guard never refused"
    used = await _used_memory(small_redis)
    assert 0.85 * 16 * MIB <= used < 16 * MIB  # refused above the mark, below maxmemory
    guard.added(16 * MIB)  # what this gateway enqueued since its last reading counts until the next one
    with pytest.raises(QueueMemoryFull):
        await guard.check()
    # The request accepted before still gets its answer stored and published: settles have their room.
    assert await queue.settle(MODEL, delivery, _finished("waiting"))
    assert await queue.final_reply(MODEL, "waiting") is not None


def _generation(delivery: Delivery) -> wire.GenerationRequest:
    """A delivered choice's request for our runtime (these tests queue no upstream requests)."""
    request = delivery.queued.request
    assert isinstance(request, wire.GenerationRequest)
    return request
