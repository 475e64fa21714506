"""A request's way through ``Admission.submit`` and its ``Ticket``, against a real Redis. The dispatcher's side is
played by the test (reading the queue, publishing replies, settling); replicas come from a fake backend through
the real ``Scaler``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

import wire
from gateway.api.admission import Admission, Delta, Ticket
from gateway.backends import NO_REPLICAS, Replicas
from gateway.catalog import ModelCatalog
from gateway.errors import ColdStartTimeout, GenerationFailed
from gateway.metrics import Metrics
from gateway.queue.fence import Fence, FencedDoor
from gateway.queue.stream import INLINE, Delivery, Held, RequestQueue
from gateway.queue.upstream import UpstreamRequest
from gateway.relay.messages import Chunk, Dispatched, Final, Finished, Token
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.replicas.coldstarts import ColdStarts, RedisDurations
from gateway.replicas.context import ContextLengths
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.autoscaler import Scaler
from gateway.settings import ModelSettings, ServerSettings
from gateway.store import keys
from tests.gateway.queue.entries import read_batch

pytestmark = pytest.mark.integration

MODEL = "tiny"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)


class Backend:
    """Never gets a replica ready; records the scale-ups asked of it as (model, count, fresh)."""

    def __init__(self) -> None:
        self.replicas_of: dict[str, Replicas] = {}
        self.scale_ups: list[tuple[str, int, bool]] = []

    def replicas(self, model: str) -> Replicas:
        return self.replicas_of.get(model, NO_REPLICAS)

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        self.scale_ups.append((model, at_least, fresh))
        self.replicas_of[model] = Replicas(desired=max(at_least, self.replicas(model).desired), ready=0)
        return True

    async def scale_down(self, model: str, to: int) -> bool:
        return False


class Spinning(Exception):
    pass


class RacingQueue(RequestQueue):
    """Settles a request at the worst moment for its ticket: just after the ticket found no stored final reply
    (the dispatcher's pub/sub message is taken to be lost). Stops a ticket that keeps trying to cancel."""

    racing: tuple[Delivery, Final] | None = None
    cancels = 0

    async def cancel(self, model: str, request_id: str, entry_id: str, held: Held = INLINE) -> bool:
        self.cancels += 1
        if self.cancels > 10:
            raise Spinning(f"cancel called {self.cancels} times")
        return await super().cancel(model, request_id, entry_id, held)

    async def final_reply(self, model: str, request_id: str) -> Final | None:
        stored = await super().final_reply(model, request_id)
        if self.racing is not None:
            delivery, reply = self.racing
            self.racing = None
            silent = Delivery(delivery.entry_id, delivery.queued.model_copy(update={"reply_to": ""}))
            await self.settle(model, silent, reply)
        return stored


@dataclass
class Rig:
    gateway: Admission
    queue: RacingQueue
    sender: ReplySender
    backend: Backend
    router: ReplyRouter
    abandoned: list[tuple[str, str, str, Held]]

    async def submit(self, request_id: str, *, stream: bool = False) -> Ticket:
        return await self.gateway.submit(MODEL, wire.GenerationRequest(id=request_id, prompt="hi", stream=stream))

    async def take(self) -> list[Delivery]:
        """What a dispatcher would get now."""
        return await read_batch(self.queue, MODEL, "dispatcher", 100)


def _finished(request_id: str, text: str) -> Finished:
    return Finished(id=request_id, result=wire.FinishEvent(id=request_id, text=text, finish_reason="stop", usage=USAGE))


@pytest.fixture
async def rig(redis_url: str) -> AsyncIterator[Rig]:
    redis = Redis.from_url(redis_url)
    model = ModelSettings(name=MODEL, cold_start_timeout_s=0.3)
    catalog = ModelCatalog([model])
    queue = RacingQueue(redis=redis, max_queue_per_model=100)
    await queue.prepare(MODEL)
    door = FencedDoor()
    settings = ServerSettings(gateway_id="gw-test", request_timeout_s=30)
    router = ReplyRouter(redis, keys.replies(settings.gateway_id), {keys.FENCES: door.lifted})
    backend = Backend()
    metrics = Metrics()
    endpoints = ReadyEndpoints()
    cold_starts = ColdStarts(durations=RedisDurations(redis), endpoints=endpoints, metrics=metrics)
    scaler = Scaler(
        catalog=catalog,
        queue=queue,
        fence=Fence(redis),
        backend=backend,
        endpoints=endpoints,
        metrics=metrics,
        cold_starts=cold_starts,
        interval_s=1.0,
    )
    await router.start()
    try:
        abandoned: list[tuple[str, str, str, Held]] = []
        gateway = Admission(
            settings=settings,
            catalog=catalog,
            queue=queue,
            replies=router,
            door=door,
            scaler=scaler,
            metrics=metrics,
            abandon=lambda *entry: abandoned.append(entry),
            limits=ContextLengths(redis),
            cold_starts=cold_starts,
        )
        yield Rig(gateway, queue, ReplySender(redis), backend, router, abandoned)
    finally:
        await router.stop()
        await redis.aclose()


async def test_a_request_scales_its_model_from_zero(rig: Rig) -> None:
    ticket = await rig.submit("a")
    assert rig.backend.scale_ups == [(MODEL, 1, False)]
    await ticket.close()


async def test_no_replica_within_the_cold_start_timeout_is_a_503_and_cancels(rig: Rig) -> None:
    ticket = await rig.submit("a")
    with pytest.raises(ColdStartTimeout) as info:
        await ticket.dispatched()
    assert info.value.status_code == 503
    assert info.value.retry_after_s == ticket.model.retry_after_s
    assert await rig.take() == []  # a replica that comes up later never works on it
    await ticket.close()


async def test_a_redelivered_attempt_does_not_repeat_streamed_text(rig: Rig) -> None:
    ticket = await rig.submit("a", stream=True)
    (delivery,) = await rig.take()
    replies: list[Dispatched | Token] = [
        Dispatched(id="a", attempt=1),
        Token(id="a", attempt=1, text="Hel"),
        Token(id="a", attempt=1, text="lo"),
        Dispatched(id="a", attempt=2),  # the replica died; another one starts over
        Token(id="a", attempt=2, text="He"),
        Token(id="a", attempt=2, text="llo"),
        Token(id="a", attempt=2, text=" world"),
    ]
    await rig.sender.publish([(rig.router.channel, reply) for reply in replies])
    await rig.queue.settle(MODEL, delivery, _finished("a", "Hello world"))
    await ticket.dispatched()
    async with asyncio.timeout(5):
        items = [item async for item in ticket.stream()]
    assert items[:-1] == [Delta("Hel"), Delta("lo"), Delta(" world")]
    assert items[-1] == _finished("a", "Hello world").result
    await ticket.close()
    assert await rig.queue.final_reply(MODEL, "a") == _finished("a", "Hello world")  # answered: not cancelled


async def test_an_upstream_stream_is_never_continued_by_another_attempt(rig: Rig) -> None:
    """A forwarded request's events come from one attempt; another attempt's (its first dispatcher died and the
    request was taken over) would splice a second answer onto the first: the stream ends with an error instead."""
    request = UpstreamRequest(id="u", path="/v1/completions", body='{"model":"m"}', stream=True)
    ticket = await rig.gateway.submit_upstream(MODEL, request)
    replies: list[Dispatched | Chunk] = [
        Dispatched(id="u", attempt=1),
        Chunk(id="u", attempt=1, data=('{"n":1}', '{"n":2}')),
        Dispatched(id="u", attempt=2),
        Chunk(id="u", attempt=2, data=('{"n":1}',)),
    ]
    await rig.sender.publish([(rig.router.channel, reply) for reply in replies])
    await ticket.dispatched()
    got: list[tuple[str, ...]] = []
    with pytest.raises(GenerationFailed, match="failed while streaming"):
        async with asyncio.timeout(5):
            async for item in ticket.relayed():
                assert isinstance(item, Chunk)
                got.append(item.data)
    assert got == [('{"n":1}', '{"n":2}')]
    await ticket.close()


def _entries(*tokens: str) -> tuple[wire.TokenLogprob, ...]:
    return tuple(wire.TokenLogprob(token=t, bytes=tuple(t.encode()), logprob=-1.0) for t in tokens)


async def test_a_redelivered_attempt_does_not_repeat_logprob_entries(rig: Rig) -> None:
    ticket = await rig.submit("a", stream=True)
    (delivery,) = await rig.take()
    replies: list[Dispatched | Token] = [
        Dispatched(id="a", attempt=1),
        Token(id="a", attempt=1, text="Hel", logprobs=_entries("Hel")),
        Dispatched(id="a", attempt=2),
        Token(id="a", attempt=2, text="Hello", logprobs=_entries("Hel", "lo")),
    ]
    await rig.sender.publish([(rig.router.channel, reply) for reply in replies])
    result = wire.FinishEvent(
        id="a", text="Hello!", finish_reason="stop", usage=USAGE, logprobs=_entries("Hel", "lo", "!")
    )
    await rig.queue.settle(MODEL, delivery, Finished(id="a", result=result))
    await ticket.dispatched()
    async with asyncio.timeout(5):
        items = [item async for item in ticket.stream()]
    assert items == [
        Delta("Hel", _entries("Hel")),
        Delta("lo", _entries("lo")),
        Delta("!", _entries("!")),  # the finished result holds what no token brought
        result,
    ]
    await ticket.close()


async def test_a_redelivered_attempt_does_not_repeat_tool_calls(rig: Rig) -> None:
    ticket = await rig.submit("a", stream=True)
    (delivery,) = await rig.take()
    first, second = (
        wire.ToolCall(id=f"call_{n}", function=wire.FunctionCall(name="f", arguments="{}")) for n in (1, 2)
    )
    replies: list[Dispatched | Token] = [
        Dispatched(id="a", attempt=1),
        Token(id="a", attempt=1, text="", tool_calls=(first,)),
        Dispatched(id="a", attempt=2),
        Token(id="a", attempt=2, text="", tool_calls=(first,)),
        Token(id="a", attempt=2, text="", tool_calls=(second,)),
    ]
    await rig.sender.publish([(rig.router.channel, reply) for reply in replies])
    result = wire.FinishEvent(id="a", text="", finish_reason="tool_calls", usage=USAGE, tool_calls=(first, second))
    await rig.queue.settle(MODEL, delivery, Finished(id="a", result=result))
    await ticket.dispatched()
    async with asyncio.timeout(5):
        items = [item async for item in ticket.stream()]
    assert items == [Delta("", tool_calls=(first,)), Delta("", tool_calls=(second,)), result]
    await ticket.close()


async def test_closing_an_unanswered_ticket_cancels_it(rig: Rig) -> None:
    ticket = await rig.submit("a")
    await ticket.close()
    assert await rig.take() == []
    assert (await rig.queue.load(MODEL)).demand == 0
    assert not rig.router.is_waiting("a")
    assert rig.abandoned == []  # Redis was there: cancelled at once, nothing handed on


async def test_a_request_that_waited_at_the_fence_scales_up_with_a_fresh_count(rig: Rig, redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.set(keys.fence(MODEL), "someone", px=200)  # a scale-down is being written (its holder then died)
    await redis.aclose()
    ticket = await rig.submit("a")  # waits at the door until the fence's TTL runs out
    assert rig.backend.scale_ups == [(MODEL, 1, True)]
    assert [d.queued.id for d in await rig.take()] == ["a"]
    await ticket.close()


async def test_a_final_reply_stored_just_as_the_cold_start_timeout_ends_is_returned(rig: Rig) -> None:
    ticket = await rig.submit("a")
    (delivery,) = await rig.take()
    rig.queue.racing = (delivery, _finished("a", "just in time"))
    async with asyncio.timeout(3):
        await ticket.dispatched()
        assert await ticket.result() == _finished("a", "just in time").result
    await ticket.close()
