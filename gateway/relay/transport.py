"""How a request's outcome travels from whichever replica dispatched it back to the replica holding its client.

Dispatchers ``PUBLISH`` replies (``gateway.relay.messages``) on the reply channel named in the queued request
(``ReplySender``), all the non-final replies of one flush for one channel as one JSON array (``gateway.relay.buffer``);
each gateway replica keeps one subscription to its own channel and hands each reply to the waiting request
(``ReplyRouter``). Replies for this replica's own channel skip Redis: they are handed over in-process, in the
same order; a final reply for them is stored by the settle script without a publish and handed over once
stored (``gateway.dispatch.batches``), after the flush before it. Pub/sub is not durable, so the final reply is also
stored in the request's ``settled`` key (see ``queue.py``), which a waiting request reads if it has heard nothing
for a while.

The same subscription carries other broadcast channels the gateway listens to (the scale-down fence's "lifted"
announcements), so each gateway replica holds one pub/sub connection in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from pydantic import ValidationError
from redis.exceptions import RedisError

from gateway.background import Loop
from gateway.relay.messages import AnyReply, Progress, RepliesAdapter, ReplyAdapter
from gateway.store.connection import converted, text
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.replies")

#: Pause before resubscribing to a Redis that just failed.
RESUBSCRIBE_BACKOFF_S = 0.5


class ReplySender:
    """The dispatcher's side: non-final replies (dispatched, tokens) to the replicas waiting for them. With
    ``local`` (this replica's router), replies for its channel are delivered in-process."""

    def __init__(self, redis: RedisClient, local: ReplyRouter | None = None) -> None:
        self._redis = redis
        self._local = local

    async def publish(self, replies: Sequence[tuple[str, Progress]]) -> None:
        by_channel: defaultdict[str, list[Progress]] = defaultdict(list)
        for channel, reply in replies:
            by_channel[channel].append(reply)
        await self.send(by_channel)

    def is_local(self, channel: str) -> bool:
        """Whether replies on ``channel`` go to this replica's own clients (in-process)."""
        return self._local is not None and channel == self._local.channel

    def deliver_here(self, reply: AnyReply) -> None:
        """A final reply for this replica's own client, stored already: handed over without Redis."""
        if self._local is not None:
            self._local.deliver([reply])

    async def send(self, by_channel: Mapping[str, Sequence[Progress]]) -> None:
        """One message per channel, the replies in order."""
        remote = dict(by_channel)
        if self._local is not None and (here := remote.pop(self._local.channel, None)):
            self._local.deliver(here)
        if not remote:
            return
        async with converted(), self._redis.pipeline(transaction=False) as pipe:
            for channel, replies in remote.items():
                pipe.publish(channel, RepliesAdapter.dump_json(list(replies)))
            await pipe.execute()


class ReplyRouter:
    """One subscription per gateway replica; hands replies to the requests waiting for them, and the messages
    of the ``broadcasts`` channels to their handlers."""

    def __init__(
        self, redis: RedisClient, channel: str, broadcasts: Mapping[str, Callable[[str], None]] | None = None
    ) -> None:
        self._redis = redis
        self.channel = channel
        self._broadcasts = dict(broadcasts or {})
        self._waiting: dict[str, asyncio.Queue[AnyReply]] = {}
        self._loop = Loop("reply-router", self._listen)
        self._subscribed = asyncio.Event()
        self._on_subscribed: list[Callable[[], None]] = []

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(message)`` for every message of the broadcast ``channel``; before ``start``."""
        self._broadcasts[channel] = handler

    def on_subscribed(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` each time the subscription is (re)made: messages sent while it was down are lost."""
        self._on_subscribed.append(handler)

    async def start(self) -> None:
        self._loop.start()
        await self._subscribed.wait()

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    async def stop(self) -> None:
        await self._loop.stop()

    @contextlib.contextmanager
    def expect(self, request_id: str) -> Iterator[asyncio.Queue[AnyReply]]:
        """Register interest in a request's replies; must be entered before the request is enqueued."""
        inbox: asyncio.Queue[AnyReply] = asyncio.Queue()
        self._waiting[request_id] = inbox
        try:
            yield inbox
        finally:
            del self._waiting[request_id]

    def is_waiting(self, request_id: str) -> bool:
        """Whether a client of this replica still waits for the request."""
        return request_id in self._waiting

    async def _listen(self) -> None:
        try:
            await self._listen_once()
        except RedisError as exc:
            self._subscribed.clear()
            log.warning("reply subscription lost (%s); resubscribing", exc)
            await asyncio.sleep(RESUBSCRIBE_BACKOFF_S)

    async def _listen_once(self) -> None:
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self.channel, *self._broadcasts)
            self._subscribed.set()
            for subscribed in self._on_subscribed:
                subscribed()
            while not self._loop.stopping:  # wakes at least every second, so a stop is never missed
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message["type"] != "message":
                    continue
                handler = self._broadcasts.get(text(message["channel"]))
                if handler is not None:
                    handler(text(message["data"]))
                else:
                    self._deliver(message["data"])

    def deliver(self, replies: Iterable[AnyReply]) -> None:
        """Hand replies to the requests waiting here (the others are dropped: nobody waits for them)."""
        for reply in replies:
            inbox = self._waiting.get(reply.id)
            if inbox is not None:
                inbox.put_nowait(reply)

    def _deliver(self, data: bytes | str) -> None:
        try:
            if data[:1] in (b"[", "["):
                self.deliver(RepliesAdapter.validate_json(data))
            else:
                self.deliver([ReplyAdapter.validate_json(data)])
        except ValidationError:
            log.error("dropping malformed reply on %s: %.200r", self.channel, data)
