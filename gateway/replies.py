"""How a request's outcome travels from whichever replica dispatched it back to the replica holding its client.

Dispatchers ``PUBLISH`` replies on the reply channel named in the queued request; each gateway replica keeps one
subscription to its own channel and hands each reply to the waiting request. Pub/sub is not durable, so the
final reply is also stored in the request's ``settled`` key (see ``queue.py``), which a waiting request reads
if it has heard nothing for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

import wire
from gateway import keys
from gateway.tasks import Loop

log = logging.getLogger("kaltstart.replies")


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str


class Dispatched(_Reply):
    """The request was sent to a ready replica (attempt N): the cold start, if any, is over."""

    kind: Literal["dispatched"] = "dispatched"
    attempt: int


class Token(_Reply):
    """Streamed text of attempt N. A redelivered request starts again from its first token."""

    kind: Literal["token"] = "token"
    attempt: int
    text: str


class Finished(_Reply):
    kind: Literal["finished"] = "finished"
    result: wire.FinishEvent


class Failed(_Reply):
    """The request will not be answered: ``status`` is the HTTP status to give the client."""

    kind: Literal["failed"] = "failed"
    status: int
    message: str


Reply = Annotated[Dispatched | Token | Finished | Failed, Field(discriminator="kind")]
Final = Finished | Failed
ReplyAdapter: TypeAdapter[Dispatched | Token | Finished | Failed] = TypeAdapter(Reply)


class ReplyRouter:
    """One subscription per gateway replica; hands replies to the requests waiting for them."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self.channel = channel
        self._waiting: dict[str, asyncio.Queue[Dispatched | Token | Finished | Failed]] = {}
        self._loop = Loop("reply-router", self._listen)
        self._subscribed = asyncio.Event()
        self._fences_lifted: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        self._loop.start()
        await self._subscribed.wait()

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    async def stop(self) -> None:
        await self._loop.stop()

    @contextlib.contextmanager
    def expect(self, request_id: str) -> Iterator[asyncio.Queue[Dispatched | Token | Finished | Failed]]:
        """Register interest in a request's replies; must be entered before the request is enqueued."""
        inbox: asyncio.Queue[Dispatched | Token | Finished | Failed] = asyncio.Queue()
        self._waiting[request_id] = inbox
        try:
            yield inbox
        finally:
            del self._waiting[request_id]

    async def _listen(self) -> None:
        try:
            await self._listen_once()
        except RedisError as exc:
            self._subscribed.clear()
            log.warning("reply subscription lost (%s); resubscribing", exc)
            await asyncio.sleep(0.5)  # back off before reconnecting to a Redis that just failed

    async def _listen_once(self) -> None:
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel, keys.FENCES)
            self._subscribed.set()
            while not self._loop.stopping:  # wakes at least every second, so a stop is never missed
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message["type"] != "message":
                    continue
                if _text(message["channel"]) == keys.FENCES:
                    self._fence_lifted(_text(message["data"]))
                else:
                    self._deliver(message["data"])

    def fence_lifted(self, model: str) -> asyncio.Event:
        """An event set when the model's scale-down fence is next lifted. Take it before trying to enqueue, so
        that a lift between the try and the wait is not missed."""
        return self._fences_lifted.setdefault(model, asyncio.Event())

    def _fence_lifted(self, model: str) -> None:
        event = self._fences_lifted.pop(model, None)
        if event is not None:
            event.set()

    def _deliver(self, data: bytes | str) -> None:
        try:
            reply = ReplyAdapter.validate_json(data)
        except ValidationError:
            log.error("dropping malformed reply on %s: %.200r", self.channel, data)
            return
        inbox = self._waiting.get(reply.id)
        if inbox is not None:
            inbox.put_nowait(reply)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
