"""The dispatcher against a real Redis, with the runtime replaced by an ``httpx.MockTransport`` answering
``POST /v1/batch`` in the wire format; and the endpoint pool that picks the replica for each batch."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.dispatch.loop import Dispatcher
from gateway.metrics import Metrics
from gateway.queue.signals import WorkSignals
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.messages import AnyReply, Dispatched, Failed, Finished, Token
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.replicas import endpoints as endpoints_module
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from gateway.settings import ModelSettings
from gateway.store import keys
from tests.gateway.queue.entries import read_batch

pytestmark = pytest.mark.integration

MODEL = "tiny"
CHANNEL = "replies:test"
R1, R2 = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
SETTINGS = ModelSettings(name=MODEL, max_batch_size=8, max_batch_delay_s=0.0)

Event = wire.TokenEvent | wire.FinishEvent | wire.ErrorEvent


def token(request_id: str, text: str) -> wire.TokenEvent:
    return wire.TokenEvent(id=request_id, text=text)


def finish(request_id: str, text: str) -> wire.FinishEvent:
    return wire.FinishEvent(id=request_id, text=text, finish_reason="stop", usage=USAGE)


def ndjson(events: Iterable[Event]) -> bytes:
    return b"".join(e.model_dump_json().encode() + b"\n" for e in events)


class BrokenStream(httpx.AsyncByteStream):
    """A batch answer whose connection drops after ``events``."""

    def __init__(self, events: Iterable[Event]) -> None:
        self._body = ndjson(events)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body
        raise httpx.ReadError("connection reset by peer")


Answer = Callable[[wire.BatchRequest], httpx.Response]


@dataclass
class Runtime:
    """The fake runtime: records each batch it is sent (URL, body) and answers it with ``answer``."""

    answer: Answer
    batches: list[tuple[str, wire.BatchRequest]] = field(default_factory=list)

    #: What its ready report says: ``static`` (one batch at a time) or ``continuous``.
    scheduler: str = "static"
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_batches(self, count: int) -> None:
        """Until ``count`` batches have arrived."""
        async with asyncio.timeout(5):
            while len(self.batches) < count:
                self.arrived.clear()
                await self.arrived.wait()

    cancels: list[tuple[str, ...]] = field(default_factory=list)
    #: When set, a batch is taken only once this is set (the runtime's answer has not begun before).
    take_batches: asyncio.Event | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == wire.CANCEL_PATH:
            ids = wire.CancelRequest.model_validate_json(await request.aread()).ids
            self.cancels.append(ids)
            return httpx.Response(200, json={"cancelled": list(ids)})
        if request.method == "POST" and self.take_batches is not None:
            await self.take_batches.wait()
        if request.method == "GET" and request.url.path == wire.READY_PATH:
            report = {"model": MODEL, "max_batch_size": 8, "context_length": 512, "scheduler": self.scheduler}
            return httpx.Response(200, json=report)
        assert request.method == "POST" and request.url.path == wire.BATCH_PATH
        body = wire.BatchRequest.model_validate_json(await request.aread())
        self.batches.append((f"{request.url.scheme}://{request.url.netloc.decode()}", body))
        self.arrived.set()
        return self.answer(body)


def answering(events: Callable[[wire.BatchRequest], Iterable[Event]]) -> Answer:
    return lambda batch: httpx.Response(200, content=ndjson(events(batch)), headers={"content-type": wire.NDJSON})


def echo(batch: wire.BatchRequest) -> list[Event]:
    """Two tokens per request (for every request: the dispatcher decides which ones are relayed), then its finish."""
    events: list[Event] = []
    for r in batch.requests:
        events += [token(r.id, "he"), token(r.id, "llo"), finish(r.id, "hello")]
    return events


@pytest.fixture
async def queue(redis: Redis) -> RequestQueue:
    """Room for every request a test queues (the shared fixture allows 3)."""
    return RequestQueue(redis=redis, max_queue_per_model=100)


@pytest.fixture
async def router(redis: Redis) -> AsyncIterator[ReplyRouter]:
    r = ReplyRouter(redis, CHANNEL, {})
    await r.start()
    yield r
    await r.stop()


@dataclass
class Rig:
    queue: RequestQueue
    sender: ReplySender
    endpoints: ReadyEndpoints
    metrics: Metrics
    runtime: Runtime
    dispatcher: Dispatcher

    async def enqueue(self, request_id: str, *, stream: bool = False) -> None:
        request = wire.GenerationRequest(id=request_id, prompt="hi", stream=stream)
        await self.queue.enqueue(MODEL, QueuedRequest(request=request, reply_to=CHANNEL, accepted_at=time.time()))

    async def queued(self) -> list[QueuedRequest]:
        """What is back in the queue for another dispatch (read as another consumer)."""
        return [d.queued for d in await read_batch(self.queue, MODEL, "inspector", 100)]

    async def replies(self, inbox: asyncio.Queue[AnyReply], request_id: str) -> list[AnyReply]:
        """Every reply the request got so far: a marker published now arrives after all of them."""
        marker = Dispatched(id=request_id, attempt=-1)
        await self.sender.publish([(CHANNEL, marker)])
        got: list[AnyReply] = []
        async with asyncio.timeout(5):
            while (reply := await inbox.get()) != marker:
                got.append(reply)
        return got


@pytest.fixture
async def make_rig(queue: RequestQueue, redis: Redis) -> AsyncIterator[Callable[[Answer], Rig]]:
    clients: list[httpx.AsyncClient] = []

    def make(answer: Answer, settings: ModelSettings = SETTINGS, local: ReplyRouter | None = None) -> Rig:
        runtime = Runtime(answer)
        client = httpx.AsyncClient(transport=httpx.MockTransport(runtime.handle))
        clients.append(client)
        endpoints = ReadyEndpoints()
        endpoints.set(MODEL, [R1])
        metrics = Metrics()
        sender = ReplySender(redis, local=local)
        runtime_client = HttpxRuntimeClient(client)
        dispatcher = Dispatcher(
            settings=settings,
            queue=queue,
            sender=sender,
            endpoints=endpoints,
            client=runtime_client,
            consumer="c1",
            metrics=metrics,
            max_attempts=2,
        )
        return Rig(queue, sender, endpoints, metrics, runtime, dispatcher)

    yield make
    for client in clients:
        await client.aclose()


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


async def test_tokens_are_relayed_for_streams_and_finals_settled_once(
    make_rig: Callable[[Answer], Rig], router: ReplyRouter
) -> None:
    def twice(batch: wire.BatchRequest) -> list[Event]:
        return [*echo(batch), finish("s", "again")]  # a duplicate finish is ignored

    rig = make_rig(answering(twice))
    with router.expect("s") as streamed, router.expect("p") as plain:
        await rig.enqueue("s", stream=True)
        await rig.enqueue("p")
        await rig.dispatcher.step()
        await rig.dispatcher.drain(5)
        final_s, final_p = Finished(id="s", result=finish("s", "hello")), Finished(id="p", result=finish("p", "hello"))
        assert await rig.replies(streamed, "s") == [
            Dispatched(id="s", attempt=1),
            Token(id="s", attempt=1, text="hello"),  # "he" and "llo" came in one read: one flush, one token
            final_s,
        ]
        assert await rig.replies(plain, "p") == [Dispatched(id="p", attempt=1), final_p]
    assert await rig.queue.final_reply(MODEL, "s") == final_s
    assert (await rig.queue.load(MODEL)).demand == 0  # acked and deleted


async def test_replies_for_this_replicas_clients_arrive_in_process_in_order_final_last(
    make_rig: Callable[..., Rig], redis: Redis
) -> None:
    here = ReplyRouter(redis, CHANNEL, {})  # never subscribed: whatever arrives came without Redis
    rig = make_rig(answering(echo), local=here)
    with here.expect("s") as inbox:
        await rig.enqueue("s", stream=True)
        await rig.dispatcher.step()
        await rig.dispatcher.drain(5)
        got = [inbox.get_nowait() for _ in range(inbox.qsize())]
    assert got == [
        Dispatched(id="s", attempt=1),
        Token(id="s", attempt=1, text="hello"),
        Finished(id="s", result=finish("s", "hello")),
    ]
    assert await rig.queue.final_reply(MODEL, "s") == got[-1]  # stored as well, for the backstop read


async def test_a_runtime_answering_500_puts_the_batch_back_as_the_next_attempt(
    make_rig: Callable[[Answer], Rig],
) -> None:
    rig = make_rig(lambda _batch: httpx.Response(500, json={"error": "CUDA out of memory"}))
    await rig.enqueue("a")
    await rig.enqueue("b")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert [(q.id, q.attempt) for q in await rig.queued()] == [("a", 2), ("b", 2)]
    assert rig.metrics.registry.get_sample_value("kaltstart_redeliveries_total", {"model": MODEL}) == 2


async def test_a_runtime_breaking_mid_stream_puts_back_only_the_unfinished(
    make_rig: Callable[[Answer], Rig], router: ReplyRouter
) -> None:
    rig = make_rig(lambda _batch: httpx.Response(200, stream=BrokenStream([finish("a", "done"), token("b", "ha")])))
    with router.expect("b") as inbox:
        await rig.enqueue("a")
        await rig.enqueue("b", stream=True)
        await rig.dispatcher.step()
        await rig.dispatcher.drain(5)
        assert await rig.replies(inbox, "b") == [Dispatched(id="b", attempt=1), Token(id="b", attempt=1, text="ha")]
    assert isinstance(await rig.queue.final_reply(MODEL, "a"), Finished)
    assert [(q.id, q.attempt) for q in await rig.queued()] == [("b", 2)]


async def test_an_internal_error_event_is_retried(make_rig: Callable[[Answer], Rig]) -> None:
    error = wire.ErrorEvent(id="a", code="internal", message="NaN in logits")
    rig = make_rig(answering(lambda _batch: [error]))
    await rig.enqueue("a")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert await rig.queue.final_reply(MODEL, "a") is None
    assert [(q.id, q.attempt) for q in await rig.queued()] == [("a", 2)]


async def test_a_request_fails_with_502_after_max_attempts(make_rig: Callable[[Answer], Rig]) -> None:
    rig = make_rig(lambda _batch: httpx.Response(500, json={"error": "broken"}))
    await rig.enqueue("a")
    await rig.dispatcher.step()  # attempt 1 fails and is put back
    await rig.dispatcher.step()  # attempt 2 (waits for the replica's slot, then reads the redelivery) fails too
    await rig.dispatcher.drain(5)
    assert len(rig.runtime.batches) == 2
    final = await rig.queue.final_reply(MODEL, "a")
    assert isinstance(final, Failed) and final.status == 502
    assert (await rig.queue.load(MODEL)).demand == 0


@pytest.mark.security
async def test_a_runtime_answering_503_not_loaded_is_not_ready_not_a_failure(
    make_rig: Callable[[Answer], Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica taken for ready too early (a false ready announcement, a restart at the same address) answers
    503 until its model is loaded: the batch waits for it, and no attempt is used up (max_attempts is 2 here)."""
    monkeypatch.setattr(endpoints_module, "SUSPEND_S", 0.01)
    loading = [httpx.Response(503, json={"error": "the model is not loaded yet"}, headers={"retry-after": "1"})] * 3
    rig = make_rig(lambda batch: loading.pop() if loading else answering(echo)(batch))
    rig.endpoints.vouch(MODEL, [R1])
    await rig.enqueue("a")
    for _ in range(4):
        await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert len(rig.runtime.batches) == 4
    assert await rig.queue.final_reply(MODEL, "a") == Finished(id="a", result=finish("a", "hello"))
    assert rig.metrics.registry.get_sample_value("kaltstart_redeliveries_total", {"model": MODEL}) is None
    assert rig.metrics.registry.get_sample_value("kaltstart_poison_requests_total", {"model": MODEL}) is None


async def test_an_invalid_request_fails_with_400_without_retry(make_rig: Callable[[Answer], Rig]) -> None:
    error = wire.ErrorEvent(id="a", code="invalid_request", message="prompt longer than the context")
    rig = make_rig(answering(lambda _batch: [error]))
    await rig.enqueue("a")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert await rig.queue.final_reply(MODEL, "a") == Failed(id="a", status=400, message=error.message)
    assert (await rig.queue.load(MODEL)).demand == 0
    assert len(rig.runtime.batches) == 1


async def test_a_batch_waits_for_a_ready_replica(make_rig: Callable[[Answer], Rig]) -> None:
    rig = make_rig(answering(echo))
    rig.endpoints.set(MODEL, [])
    await rig.enqueue("a")
    step = asyncio.create_task(rig.dispatcher.step())
    await asyncio.sleep(0)
    assert not step.done()
    rig.endpoints.set(MODEL, [R2])
    await asyncio.wait_for(step, 5)
    await rig.dispatcher.drain(5)
    assert [url for url, _ in rig.runtime.batches] == [R2]


# The endpoint pool


async def test_pool_waits_for_a_ready_replica() -> None:
    endpoints = ReadyEndpoints()
    pool = EndpointPool(MODEL, endpoints, budget=4)
    acquiring = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    endpoints.set("other-model", [R2])
    await asyncio.sleep(0)
    assert not acquiring.done()
    endpoints.set(MODEL, [R1])
    assert await asyncio.wait_for(acquiring, 5) == (R1, 4)
    assert pool.is_ready(R1) and not pool.is_ready(R2)
    pool.close()


async def test_a_static_replica_takes_one_batch_at_a_time() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    assert await pool.acquire() == (R1, 8)
    pool.start(R1, 4)
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    assert not second.done()  # R1 is busy with a batch
    pool.finish(R1, 3)
    await asyncio.sleep(0)
    assert not second.done()  # ...until all of it is done
    pool.finish(R1)
    assert await asyncio.wait_for(second, 5) == (R1, 8)
    pool.close()


async def test_a_continuous_replica_takes_requests_while_it_has_rows() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    pool.set_continuous(R1, True)
    pool.start(R1, 6)
    assert await pool.acquire() == (R1, 2)  # busy, with room for two more
    pool.start(R1, 2)
    full = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    assert not full.done()
    pool.finish(R1)  # one request of the running batch finished: its row is free at once
    assert await asyncio.wait_for(full, 5) == (R1, 1)
    pool.close()


async def test_pool_prefers_the_replica_with_most_room() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1, R2])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    pool.set_continuous(R1, True)
    pool.set_continuous(R2, True)
    pool.start(R1, 5)
    assert await pool.acquire() == (R2, 8)
    pool.start(R2, 7)
    assert await pool.acquire() == (R1, 3)  # 3 free beats 1
    endpoints.set(MODEL, [R2])  # R1 went away
    assert await pool.acquire() == (R2, 1)
    pool.close()


async def test_pool_never_gives_a_replica_that_left_the_ready_set() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1, R2])
    pool = EndpointPool(MODEL, endpoints, budget=1)
    pool.start(R1, 1)
    endpoints.set(MODEL, [R1])  # R2 is no longer ready, though it has room
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    pool.finish(R1)
    assert await asyncio.wait_for(waiting, 5) == (R1, 1)
    pool.close()


class HeldStream(httpx.AsyncByteStream):
    """A batch answer that stays open (its batch still running) until ``release`` is set."""

    def __init__(self, events: Iterable[Event], release: asyncio.Event) -> None:
        self._body = ndjson(events)
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._release.wait()
        yield self._body


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
    waiting = asyncio.create_task(rig.dispatcher.step())
    for _ in range(3):  # the dispatcher runs up to its wait for room (no I/O on the way): it must not send
        await asyncio.sleep(0)
    assert len(rig.runtime.batches) == 1 and not waiting.done()
    release.set()
    await asyncio.wait_for(waiting, 5)
    await rig.runtime.wait_for_batches(2)
    assert [[r.id for r in body.requests] for _, body in rig.runtime.batches] == [["first"], ["second"]]
    await rig.dispatcher.drain(5)


async def test_a_cancel_before_the_runtime_took_the_batch_is_sent_once_it_has(
    make_rig: Callable[[Answer], Rig],
) -> None:
    release = asyncio.Event()
    rig = make_rig(lambda batch: httpx.Response(200, stream=HeldStream(echo(batch), release)))
    rig.runtime.take_batches = asyncio.Event()
    await rig.enqueue("gone")
    await rig.dispatcher.step()
    rig.dispatcher.cancel("gone")  # the client left; the batch is on its way but not taken yet
    for _ in range(3):
        await asyncio.sleep(0)
    assert rig.runtime.cancels == []  # a runtime would forget a cancel for an id it does not hold
    rig.runtime.take_batches.set()
    async with asyncio.timeout(5):
        while not rig.runtime.cancels:  # noqa: ASYNC110 - the mock has no event for it; polls one loop turn
            await asyncio.sleep(0)
    assert rig.runtime.cancels == [("gone",)]
    release.set()
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
