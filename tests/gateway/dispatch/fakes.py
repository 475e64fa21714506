"""The fake runtime of the dispatch tests (an ``httpx.MockTransport`` handler answering ``POST /v1/batch`` in the
wire format), the answers it gives, and the rig of a dispatcher wired to it and to a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpx

import wire
from gateway.dispatch.loop import Dispatcher
from gateway.metrics import Metrics
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.messages import AnyReply, Dispatched
from gateway.relay.transport import ReplySender
from gateway.settings import ModelSettings
from tests.gateway.queue.entries import read_batch
from tests.gateway.replicas.watched import WatchedEndpoints

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


class HeldStream(httpx.AsyncByteStream):
    """A batch answer that stays open (its batch still running) until ``release`` is set."""

    def __init__(self, events: Iterable[Event], release: asyncio.Event) -> None:
        self._body = ndjson(events)
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._release.wait()
        yield self._body


Answer = Callable[[wire.BatchRequest], httpx.Response]


async def _until(event: asyncio.Event, done: Callable[[], bool], timeout_s: float) -> None:
    """Wait, at most ``timeout_s``, until ``done()``, looking again each time ``event`` is set."""
    async with asyncio.timeout(timeout_s):
        while not done():
            event.clear()
            await event.wait()


@dataclass
class Runtime:
    """The fake runtime: records each batch it is sent (URL, body) and answers it with ``answer``."""

    answer: Answer
    batches: list[tuple[str, wire.BatchRequest]] = field(default_factory=list)

    #: What its ready report says: ``static`` (one batch at a time) or ``continuous``.
    scheduler: str = "static"
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a batch is posted, before it is taken (see ``take_batches``).
    posted: asyncio.Event = field(default_factory=asyncio.Event)
    cancels: list[tuple[str, ...]] = field(default_factory=list)
    #: Cancellations that came while a batch waited to be taken (a runtime would forget them).
    early_cancels: int = 0
    cancel_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: When set, a batch is taken only once this is set (the runtime's answer has not begun before).
    take_batches: asyncio.Event | None = None

    async def wait_for_batches(self, count: int) -> None:
        """Until ``count`` batches have arrived."""
        await _until(self.arrived, lambda: len(self.batches) >= count, 5)

    async def wait_for_cancels(self, count: int) -> None:
        """Until ``count`` cancellations have arrived."""
        await _until(self.cancel_arrived, lambda: len(self.cancels) >= count, 5)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == wire.CANCEL_PATH:
            ids = wire.CancelRequest.model_validate_json(await request.aread()).ids
            self.cancels.append(ids)
            self.early_cancels += self.take_batches is not None and not self.take_batches.is_set()
            self.cancel_arrived.set()
            return httpx.Response(200, json={"cancelled": list(ids)})
        if request.method == "POST":
            self.posted.set()
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


@dataclass
class Rig:
    queue: RequestQueue
    sender: ReplySender
    endpoints: WatchedEndpoints
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
