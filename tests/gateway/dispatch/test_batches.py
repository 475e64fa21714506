"""The batch relay against a real Redis and a fake runtime (``fakes``), driven by a dispatcher: events relayed,
finals settled once, what a failed replica left retried or failed."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.relay.messages import Dispatched, Failed, Finished, Token
from gateway.relay.transport import ReplyRouter
from gateway.replicas import endpoints as endpoints_module
from tests.gateway.dispatch.fakes import (
    CHANNEL,
    MODEL,
    R1,
    Answer,
    BrokenStream,
    Event,
    Rig,
    answering,
    echo,
    finish,
    token,
)

pytestmark = pytest.mark.integration


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
    # Not failures: nothing counted, though both are exported (at 0) from the model's first batch on.
    assert rig.metrics.registry.get_sample_value("kaltstart_redeliveries_total", {"model": MODEL}) == 0
    assert rig.metrics.registry.get_sample_value("kaltstart_poison_requests_total", {"model": MODEL}) == 0


async def test_an_invalid_request_fails_with_400_without_retry(make_rig: Callable[[Answer], Rig]) -> None:
    error = wire.ErrorEvent(id="a", code="invalid_request", message="prompt longer than the context")
    rig = make_rig(answering(lambda _batch: [error]))
    await rig.enqueue("a")
    await rig.dispatcher.step()
    await rig.dispatcher.drain(5)
    assert await rig.queue.final_reply(MODEL, "a") == Failed(id="a", status=400, message=error.message)
    assert (await rig.queue.load(MODEL)).demand == 0
    assert len(rig.runtime.batches) == 1
