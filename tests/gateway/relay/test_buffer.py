"""Token flushing (``gateway.relay.buffer``): per reply channel one message per flush, tokens of one attempt merged,
order
kept and nothing lost; and in-process delivery to the requests this gateway replica holds
(``gateway.relay.transport``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from redis.asyncio import Redis

from gateway.relay.buffer import ReplyBuffer, ndjson_reads
from gateway.relay.messages import AnyReply, Dispatched, Progress, Token
from gateway.relay.transport import ReplyRouter, ReplySender


class Sent:
    """A ``ProgressSender`` that keeps every flush."""

    def __init__(self) -> None:
        self.flushes: list[dict[str, list[Progress]]] = []

    async def send(self, by_channel: Mapping[str, Sequence[Progress]]) -> None:
        self.flushes.append({channel: list(replies) for channel, replies in by_channel.items()})


def text_of(replies: Sequence[AnyReply], request_id: str) -> str:
    return "".join(r.text for r in replies if isinstance(r, Token) and r.id == request_id)


async def test_a_flush_sends_one_message_per_channel_with_tokens_of_one_attempt_merged() -> None:
    sent = Sent()
    buffer = ReplyBuffer(sent)
    words = [f"w{i} " for i in range(50)]
    for word in words:
        buffer.add("gw-1", Token(id="a", attempt=1, text=word))
        buffer.add("gw-2", Token(id="b", attempt=1, text=word.upper()))
    buffer.add("gw-1", Token(id="a", attempt=2, text="again "))  # a new attempt is never merged into the last
    assert len(buffer) == 3
    await buffer.flush()
    await buffer.flush()  # nothing pending: nothing sent
    assert sent.flushes == [
        {
            "gw-1": [Token(id="a", attempt=1, text="".join(words)), Token(id="a", attempt=2, text="again ")],
            "gw-2": [Token(id="b", attempt=1, text="".join(words).upper())],
        }
    ]


async def test_tokens_of_different_requests_keep_their_order_and_nothing_is_lost() -> None:
    sent = Sent()
    buffer = ReplyBuffer(sent)
    for i in range(30):
        buffer.add("gw-1", Token(id="ab"[i % 2], attempt=1, text=str(i)))
        if i % 7 == 6:
            await buffer.flush()
    buffer.add("gw-1", Dispatched(id="c", attempt=1))
    await buffer.flush()
    replies = [reply for flush in sent.flushes for reply in flush["gw-1"]]
    assert text_of(replies, "a") == "".join(str(i) for i in range(0, 30, 2))
    assert text_of(replies, "b") == "".join(str(i) for i in range(1, 30, 2))
    assert replies[-1] == Dispatched(id="c", attempt=1)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_ndjson_reads_yield_the_complete_lines_of_each_read() -> None:
    reads = [lines async for lines in ndjson_reads(chunks(b'{"a":1}\n{"b"', b':2}\n\n{"c":3}\n{"d":4}\n', b'{"e":5}'))]
    assert reads == [[b'{"a":1}'], [b'{"b":2}', b'{"c":3}', b'{"d":4}'], [b'{"e":5}']]


@pytest.mark.integration
async def test_replies_for_this_replicas_channel_are_delivered_in_process(redis: Redis) -> None:
    """The router is not even subscribed: what arrives came without Redis, in order, at once."""
    router = ReplyRouter(redis, "replies:here", {})
    sender = ReplySender(redis, local=router)
    with router.expect("a") as inbox:
        await sender.send({"replies:here": [Dispatched(id="a", attempt=1), Token(id="a", attempt=1, text="hi")]})
        assert [inbox.get_nowait(), inbox.get_nowait()] == [
            Dispatched(id="a", attempt=1),
            Token(id="a", attempt=1, text="hi"),
        ]


@pytest.mark.integration
async def test_a_flush_for_another_replica_is_one_pubsub_message_it_unpacks_in_order(redis: Redis) -> None:
    router = ReplyRouter(redis, "replies:there", {})
    await router.start()
    try:
        sender = ReplySender(redis, local=ReplyRouter(redis, "replies:here", {}))
        with router.expect("a") as inbox:
            tokens = [Token(id="a", attempt=1, text=str(i)) for i in range(5)]
            await sender.send({"replies:there": tokens})
            async with asyncio.timeout(5):
                assert [await inbox.get() for _ in tokens] == tokens
    finally:
        await router.stop()
