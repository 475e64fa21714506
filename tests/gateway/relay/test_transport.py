"""The reply router on a real Redis pub/sub: each reply to the request waiting for it, broadcasts to their handlers,
garbage dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.relay.messages import AnyReply, Dispatched, Token
from gateway.relay.transport import ReplyRouter, ReplySender

pytestmark = pytest.mark.integration

CHANNEL = "replies:gw-1"
BROADCAST = "broadcast:fences"


@pytest.fixture
def broadcasts() -> list[str]:
    return []


@pytest.fixture
async def router(redis: Redis, broadcasts: list[str]) -> AsyncIterator[ReplyRouter]:
    r = ReplyRouter(redis, CHANNEL, {BROADCAST: broadcasts.append})
    await r.start()
    assert r.listening
    yield r
    await r.stop()


async def received(sender: ReplySender, inbox: asyncio.Queue[AnyReply], request_id: str) -> list[AnyReply]:
    """What the request got so far: a marker published now arrives after all of it."""
    marker = Dispatched(id=request_id, attempt=-1)
    await sender.publish([(CHANNEL, marker)])
    got: list[AnyReply] = []
    async with asyncio.timeout(5):
        while (reply := await inbox.get()) != marker:
            got.append(reply)
    return got


async def test_replies_reach_only_the_request_expecting_them(redis: Redis, router: ReplyRouter) -> None:
    sender = ReplySender(redis)
    with router.expect("a") as a, router.expect("b") as b:
        await sender.publish(
            [
                (CHANNEL, Token(id="a", attempt=1, text="for a")),
                (CHANNEL, Token(id="nobody", attempt=1, text="no one waits")),
                (CHANNEL, Token(id="b", attempt=1, text="for b")),
                ("replies:gw-2", Token(id="a", attempt=1, text="another gateway's")),
            ]
        )
        assert await received(sender, a, "a") == [Token(id="a", attempt=1, text="for a")]
        assert await received(sender, b, "b") == [Token(id="b", attempt=1, text="for b")]
    assert not router.is_waiting("a")


async def test_malformed_messages_are_dropped_with_a_log_line(
    redis: Redis, router: ReplyRouter, caplog: pytest.LogCaptureFixture
) -> None:
    sender = ReplySender(redis)
    with router.expect("a") as inbox:
        await redis.publish(CHANNEL, b"not json")
        await redis.publish(CHANNEL, '{"kind": "token", "id": "a"}')  # no attempt, no text
        await redis.publish(CHANNEL, b"\xff\xfe")
        await sender.publish([(CHANNEL, Token(id="a", attempt=1, text="still here"))])
        assert await received(sender, inbox, "a") == [Token(id="a", attempt=1, text="still here")]
    dropped = [r for r in caplog.records if r.name == "kaltstart.replies" and "malformed" in r.getMessage()]
    assert len(dropped) == 3 and all(r.levelno == logging.ERROR for r in dropped)
    assert router.listening


async def test_a_broadcast_goes_to_its_handler_not_to_a_request(
    redis: Redis, router: ReplyRouter, broadcasts: list[str]
) -> None:
    sender = ReplySender(redis)
    with router.expect("tiny") as inbox:
        await redis.publish(BROADCAST, "tiny")
        await redis.publish(BROADCAST, Token(id="tiny", attempt=1, text="looks like a reply").model_dump_json())
        assert await received(sender, inbox, "tiny") == []  # the marker went after both broadcasts
    assert broadcasts == ["tiny", Token(id="tiny", attempt=1, text="looks like a reply").model_dump_json()]
