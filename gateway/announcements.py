"""Runtime replicas announcing themselves (``wire.Announcement`` on ``wire.REPLICAS_CHANNEL``).

A replica announces its start-up phase, the moment it is ready and every few seconds after (see
``runtime.announce``). Each gateway replica hears them on its one pub/sub connection (``ReplyRouter.on``) and hands
them to ``ReadyEndpoints``, which takes one only from a URL the backend vouches for, so a dispatcher sends work to
a replica the moment it is ready rather than at the next readiness probe or EndpointSlice update. An announcement
lapses after ``MISSED_ANNOUNCEMENTS`` intervals without a new one; the backend's own view still stands then.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

import wire
from gateway.coldstarts import ColdStarts
from gateway.endpoints import ReadyEndpoints
from gateway.metrics import Metrics
from gateway.tasks import Loop

log = logging.getLogger("kaltstart.announcements")

#: Intervals without an announcement after which a replica's announcement lapses.
MISSED_ANNOUNCEMENTS = 3
#: How often lapsed announcements are looked for.
EXPIRY_CHECK_S = 0.5


class Announcements:
    def __init__(self, endpoints: ReadyEndpoints, cold_starts: ColdStarts, metrics: Metrics) -> None:
        self._endpoints = endpoints
        self._cold_starts = cold_starts
        self._metrics = metrics
        self._timed: dict[str, wire.StartupTimings] = {}
        self._refused: set[str] = set()
        self._loop = Loop("announcement-expiry", self._expire)

    def received(self, data: str) -> None:
        """One message of the replicas channel."""
        try:
            announcement = wire.Announcement.model_validate_json(data)
        except ValidationError:
            self._metrics.announcements.labels("malformed").inc()
            log.warning("dropping a malformed replica announcement: %.200r", data)
            return
        if not announcement.models:  # a standby: nothing to route to yet
            return
        ttl_s = MISSED_ANNOUNCEMENTS * announcement.interval_s
        ready = announcement.ready
        taken = [
            model
            for model in announcement.models
            if self._endpoints.announce(model, announcement.url, announcement.state, ready, ttl_s)
        ]
        if not taken:
            if announcement.state != "stopping":  # a replica being stopped is no longer vouched for: no news
                self._refuse(announcement)
            return
        self._metrics.announcements.labels("accepted").inc()
        self._refused.discard(announcement.url)
        self._cold_starts.announced(announcement)
        if ready is not None and ready.startup is not None and self._timed.get(announcement.url) != ready.startup:
            self._timed[announcement.url] = ready.startup
            for model in taken:
                self._cold_starts.replica_started(model, ready.startup)

    def _refuse(self, announcement: wire.Announcement) -> None:
        self._metrics.announcements.labels("refused").inc()
        if announcement.url not in self._refused:  # once per address, not every few seconds
            self._refused.add(announcement.url)
            log.warning(
                "ignoring announcements from %s for %s: not a replica of that model (not in its EndpointSlices, "
                "or not started by this gateway)",
                announcement.url,
                ", ".join(announcement.models),
            )

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _expire(self) -> None:
        self._endpoints.expire()
        await asyncio.sleep(EXPIRY_CHECK_S)  # a sweep's period, not a wait for an event
