"""Keeps this gateway replica's heartbeat in Redis, and hands back the work of replicas that died.

A replica that dies (OOM-killed, node lost) leaves the requests its dispatchers had read pending in the
consumer group. Any live replica that finds a consumer with pending entries and no heartbeat claims them:
requests whose client was held by a live replica go back on the queue; those whose client was held by the dead
replica are cancelled, as nobody is waiting for them any more.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from gateway import keys
from gateway.catalog import ModelCatalog
from gateway.connection import converted
from gateway.errors import KaltstartError
from gateway.queue import RequestQueue
from gateway.tasks import Loop

log = logging.getLogger("kaltstart.janitor")


class Heartbeats:
    """Which gateway replicas are alive: each renews a key with a TTL."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def beat(self, gateway_id: str, ttl_s: float) -> None:
        """This gateway replica is alive for another ``ttl_s``."""
        async with converted():
            await self._redis.set(keys.gateway(gateway_id), 1, px=int(ttl_s * 1000))

    async def is_alive(self, gateway_id: str) -> bool:
        async with converted():
            return bool(await self._redis.exists(keys.gateway(gateway_id)))


class Janitor:
    def __init__(
        self, queue: RequestQueue, heartbeats: Heartbeats, catalog: ModelCatalog, gateway_id: str, interval_s: float
    ) -> None:
        self._queue = queue
        self._heartbeats = heartbeats
        self._catalog = catalog
        self._id = gateway_id
        self._interval_s = interval_s
        self._loop = Loop("janitor", self._beat_and_sweep)

    @property
    def ttl_s(self) -> float:
        """A replica that has not renewed its heartbeat for this long is taken for dead."""
        return self._interval_s * 5

    async def start(self) -> None:
        await self._heartbeats.beat(self._id, self.ttl_s)  # alive before the first dispatch
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _beat_and_sweep(self) -> None:
        await asyncio.sleep(self._interval_s)  # a heartbeat's period
        try:
            await self._heartbeats.beat(self._id, self.ttl_s)
            for model in self._catalog.all():
                await self.sweep(model.name)
        except KaltstartError as exc:
            log.warning("janitor: %s", exc)

    async def sweep(self, model: str) -> None:
        for consumer, pending in (await self._queue.consumers(model)).items():
            if consumer == self._id or await self._heartbeats.is_alive(consumer):
                continue
            if pending:
                await self._reclaim(model, consumer)
            else:
                await self._queue.forget_consumer(model, consumer)

    async def _reclaim(self, model: str, dead: str) -> None:
        for delivery in await self._queue.take_over(model, dead, self._id):
            if delivery.queued.gateway and not await self._heartbeats.is_alive(delivery.queued.gateway):
                await self._queue.cancel(model, delivery.queued.id, delivery.entry_id)
                continue
            await self._queue.requeue(model, delivery, failed=False)
        log.warning("took over the requests gateway %s left in flight for %s", dead, model)
