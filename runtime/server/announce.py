"""Announcing this replica on Redis (``wire.REPLICAS_CHANNEL``), so gateways dispatch to it the moment it can serve.

A gateway otherwise learns that a replica is ready from its readiness probe (the local backend's, period 0.1 s) or
from EndpointSlices (a kubelet probe period plus propagation: seconds). The ``Announcer`` publishes a
``wire.Announcement`` at once whenever the replica's state or start-up phase changes, every ``interval_s`` while
it serves (so a gateway that started later, or missed one, learns of it too, and one that hears nothing for a few
intervals forgets it), and a last one when it stops.

Announcing only speeds things up: a Redis that cannot be reached is logged once per outage and otherwise ignored,
and gateways still find the replica by probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from wire import REPLICAS_CHANNEL, Announcement
from wire.redis_url import PoolLimits, RedisClient, client

__all__ = ["Announcer"]

log = logging.getLogger(__name__)

#: How long one publish may take before it counts as failed.
PUBLISH_TIMEOUT_S = 2.0


class Announcer:
    """Publishes ``describe()`` on the replicas channel: at ``nudge()`` and every ``interval_s``."""

    def __init__(self, redis_url: str, describe: Callable[[], Announcement], interval_s: float) -> None:
        # ``redis_url`` may name a Sentinel-managed primary (``redis+sentinel://``): announcements follow failovers.
        self._redis: RedisClient = client(redis_url, PoolLimits(timeout_s=PUBLISH_TIMEOUT_S))
        self._describe = describe
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="announcer")

    def nudge(self) -> None:
        """Announce now (the state or phase changed). Call on the event loop."""
        self._wake.set()

    async def stop(self) -> None:
        """Announce one last time (the replica is stopping), then close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.publish()
        await self._redis.aclose()

    async def publish(self) -> None:
        announcement = self._describe()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._redis.publish(REPLICAS_CHANNEL, announcement.model_dump_json())
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning("cannot announce this replica on Redis (%r); gateways will find it by probing", exc)
            self._failing = True
            return
        if self._failing:
            log.info("announcing on Redis again")
        self._failing = False

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before describing: a change during the publish is announced next
            await self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
