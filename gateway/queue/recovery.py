"""Keeps this gateway replica's heartbeat in Redis, and hands back work nobody is doing.

A replica that dies (OOM-killed, node lost) leaves the requests its dispatchers had read pending in the
consumer group. Any live replica that finds a consumer with pending entries and no heartbeat claims them:
requests whose client was held by a live replica go back on the queue; those whose client was held by the dead
replica are cancelled, as nobody is waiting for them any more.

A live replica can strand entries too: a batch that lost Redis halfway cannot settle or put back what it held.
The janitor finds its own pending entries that no running batch holds and hands them back the same way, and it
writes the cancellations that clients asked for while Redis was unreachable (``Abandoned``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import cast

from gateway.background import Loop
from gateway.catalog import ModelCatalog
from gateway.errors import KaltstartError
from gateway.queue.stream import INLINE, Delivery, Held, RequestQueue
from gateway.store import keys
from gateway.store.connection import converted, text
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.janitor")


class Heartbeats:
    """Which gateway replicas are alive: each renews a key with a TTL."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def beat(self, gateway_id: str, ttl_s: float) -> None:
        """This gateway replica is alive for another ``ttl_s``."""
        async with converted():
            await self._redis.set(keys.gateway(gateway_id), 1, px=int(ttl_s * 1000))

    async def is_alive(self, gateway_id: str) -> bool:
        async with converted():
            return bool(await self._redis.exists(keys.gateway(gateway_id)))


class Abandoned:
    """Cancellations that could not be written (Redis was unreachable when the client stopped waiting): kept
    here and written once Redis answers again, so that nobody generates for a client that already left."""

    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, str, Held]] = {}

    def add(self, model: str, request_id: str, entry_id: str, held: Held = INLINE) -> None:
        self._requests[request_id] = (model, entry_id, held)

    async def write(self, queue: RequestQueue) -> None:
        """Cancel them all; stops at the first Redis error (``QueueUnavailable``) and keeps the rest."""
        for request_id, (model, entry_id, held) in list(self._requests.items()):
            await queue.cancel(model, request_id, entry_id, held)
            del self._requests[request_id]


class Takeover:
    """Claims entries another consumer of the group holds in flight (a dead gateway's, or this one's strays)."""

    def __init__(self, redis: RedisClient, queue: RequestQueue) -> None:
        self._redis = redis
        self._queue = queue

    async def take_over(
        self,
        model: str,
        consumer: str,
        new_owner: str,
        count: int = 100,
        *,
        min_idle_s: float = 0.0,
        skip: Collection[str] = (),
    ) -> list[Delivery]:
        """Claim up to ``count`` entries that ``consumer`` holds in flight and has not touched for ``min_idle_s``
        (a dead consumer's, or this replica's own strays), except the entry ids in ``skip``. What cannot be
        dispatched is settled as failed, as a read does (``RequestQueue.claimed``)."""
        min_idle_ms = int(min_idle_s * 1000)
        async with converted():
            pending = await self._redis.xpending_range(
                keys.queue(model), keys.GROUP, min="-", max="+", count=count, consumername=consumer, idle=min_idle_ms
            )
            ids: list[int | bytes | str | memoryview[int]] = [
                p["message_id"] for p in pending if text(cast(bytes, p["message_id"])) not in skip
            ]
            response = (
                await self._redis.xclaim(keys.queue(model), keys.GROUP, new_owner, min_idle_ms, ids) if ids else []
            )
            claimed = cast(list[tuple[bytes, dict[bytes, bytes] | None]], response)
        return await self._queue.claimed(model, [(text(i), fields) for i, fields in claimed if fields])


class Janitor:
    """Every ``interval_s``: renew this replica's heartbeat, write abandoned cancellations, and hand back work
    nobody is doing — a dead replica's in-flight entries, and this replica's own entries that no running batch
    holds (a batch that lost Redis halfway leaves its entries pending)."""

    def __init__(
        self,
        *,
        queue: RequestQueue,
        takeover: Takeover,
        heartbeats: Heartbeats,
        catalog: ModelCatalog,
        gateway_id: str,
        interval_s: float,
        held: Callable[[str], Collection[str]],
        is_waiting: Callable[[str], bool],
        abandoned: Abandoned,
        in_use: Callable[[str], bool] = lambda _model: True,
        redis_up: Callable[[bool], None] = lambda _up: None,
    ) -> None:
        """``redis_up(up)``: told after every heartbeat whether it reached Redis (``kaltstart_redis_up``).
        ``in_use(model)``: whether the model has replicas or running batches; only those are swept, so an idle
        model costs no Redis command. A model without replicas has nothing in flight: it is not scaled to zero
        while it has (in-flight entries count as demand), and one that has some anyway (scaled down by hand while
        busy) is scaled up by the autoscaler's first pass, which reads every model, and so comes into use."""
        self._queue = queue
        self._takeover = takeover
        self._heartbeats = heartbeats
        self._catalog = catalog
        self._id = gateway_id
        self._interval_s = interval_s
        self._held = held
        self._is_waiting = is_waiting
        self.abandoned = abandoned
        self._in_use = in_use
        self._redis_up = redis_up
        self._loop = Loop("janitor", self._beat_and_sweep)

    @property
    def ttl_s(self) -> float:
        """A replica that has not renewed its heartbeat for this long is taken for dead."""
        return self._interval_s * 5

    async def start(self) -> None:
        await self._beat()  # alive before the first dispatch
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _beat_and_sweep(self) -> None:
        await asyncio.sleep(self._interval_s)  # a heartbeat's period
        await self.pass_once()

    async def pass_once(self) -> None:
        """One heartbeat, the abandoned cancellations, and a sweep of the models in use."""
        try:
            await self._beat()
            await self.abandoned.write(self._queue)
            models = [m.name for m in self._catalog.all() if self._in_use(m.name)]
            for model, consumers in (await self._queue.consumers_of(models)).items():
                await self._sweep(model, consumers)
        except KaltstartError as exc:
            log.warning("janitor: %s", exc)

    async def _beat(self) -> None:
        try:
            await self._heartbeats.beat(self._id, self.ttl_s)
        except KaltstartError:
            self._redis_up(False)
            raise
        self._redis_up(True)

    async def _sweep(self, model: str, consumers: dict[str, int]) -> None:
        for consumer, pending in consumers.items():
            if consumer == self._id:
                if pending:
                    await self._reclaim_own(model)
            elif await self._heartbeats.is_alive(consumer):
                continue
            elif pending:
                await self._reclaim(model, consumer)
            else:
                await self._queue.forget_consumer(model, consumer)

    async def _reclaim(self, model: str, dead: str) -> None:
        for delivery in await self._takeover.take_over(model, dead, self._id):
            await self._hand_back(model, delivery)
        log.warning("took over the requests gateway %s left in flight for %s", dead, model)

    async def _reclaim_own(self, model: str) -> None:
        """Entries this replica read that no running batch holds (idle for a heartbeat interval at least, so an
        entry between its read and its batch's start is not taken for lost)."""
        stray = await self._takeover.take_over(
            model, self._id, self._id, min_idle_s=self._interval_s, skip=set(self._held(model))
        )
        for delivery in stray:
            await self._hand_back(model, delivery)
        if stray:
            log.warning("put back %d request(s) for %s that a lost batch left pending", len(stray), model)

    async def _hand_back(self, model: str, delivery: Delivery) -> None:
        """Back on the queue if someone still waits for its answer, else cancelled."""
        if await self._client_waits(delivery):
            await self._queue.requeue(model, delivery, failed=False)
        else:
            await self._queue.cancel(model, delivery.queued.id, delivery.entry_id, delivery.queued.held)

    async def _client_waits(self, delivery: Delivery) -> bool:
        owner = delivery.queued.gateway
        if owner == self._id:
            return self._is_waiting(delivery.queued.id)
        return not owner or await self._heartbeats.is_alive(owner)
