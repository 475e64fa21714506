"""Runtime replicas announcing themselves (``wire.Announcement`` on ``wire.REPLICAS_CHANNEL``): vouched, not trusted.

A replica announces its start-up phase, the moment it is ready and every few seconds after (see
``runtime.server.announce``). Each gateway replica hears them on its one pub/sub connection (``ReplyRouter.on``), so a
dispatcher sends work to a replica the moment it is ready rather than at the next readiness probe or EndpointSlice
update. Whoever may publish on the channel (every model pod, in a cluster) can announce anything, so:

- a message longer than ``wire.MAX_ANNOUNCEMENT_BYTES`` is dropped unread, and the model checks every field's
  bounds (``wire.Announcement``: names, their number, the URL's form, ``interval_s``), so what one announcement
  can make a gateway hold or do is bounded;
- an announcement counts only for the models whose backend vouches for its URL (a process the gateway started,
  an address in the model's EndpointSlices); nothing, not even its phase, is kept for any other model;
- ``ready`` and ``stopping`` are believed only once the replica's own ``GET /readyz`` agrees (``ReadyChecks``): a
  report naming the model (ready), or no such report (stopping). Only the report the gateway read itself is used,
  for the replica's scheduler and the model's context length, never the announced one;
- dropped, refused and unconfirmed announcements are counted (``kaltstart_replica_announcements_total``) and
  logged at most once per ``LOG_EVERY_S`` and kind.

An announcement lapses after ``MISSED_ANNOUNCEMENTS`` intervals without a new one; the backend's own view still
stands then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

import wire
from gateway.background import Background, Loop
from gateway.metrics import Metrics
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.replicas.readychecks import MIN_CHECK_INTERVAL_S, ReadyChecks

log = logging.getLogger("kaltstart.announcements")

#: Intervals without an announcement after which a replica's announcement lapses.
MISSED_ANNOUNCEMENTS = 3
#: How often lapsed announcements are looked for.
EXPIRY_CHECK_S = 0.5
#: Least time between two log lines about dropped, refused or unconfirmed announcements of one kind.
LOG_EVERY_S = 60.0


class _Throttled:
    """A warning at most once per ``LOG_EVERY_S``, saying how many like it were left out meanwhile."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next = 0.0
        self._quiet = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more like it in the last {LOG_EVERY_S:.0f} s)" if self._quiet else ""
        log.warning(message + more, *args)
        self._next, self._quiet = now + LOG_EVERY_S, 0


class Announcements:
    def __init__(
        self,
        *,
        endpoints: ReadyEndpoints,
        cold_starts: ColdStarts,
        metrics: Metrics,
        checks: ReadyChecks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._cold_starts = cold_starts
        self._metrics = metrics
        self._checks = checks
        self._clock = clock
        self._timed: dict[str, wire.StartupTimings] = {}
        self._logs = {kind: _Throttled(clock) for kind in ("malformed", "refused", "unconfirmed")}
        self._background = Background()
        self._loop = Loop("announcement-expiry", self._expire)

    def received(self, data: str) -> None:
        """One message of the replicas channel."""
        announcement = self._parse(data)
        if announcement is None or not announcement.models:  # a standby: nothing to route to yet
            return
        url, state = announcement.url, announcement.state
        vouched = tuple(model for model in announcement.models if self._endpoints.vouches(model, url))
        if not vouched:
            if state != "stopping":  # a replica being stopped is no longer vouched for: no news
                self._metrics.announcements.labels("refused").inc()
                self._logs["refused"].warning(
                    "ignoring announcements from %s for %.200s: not a replica of that model (not in its "
                    "EndpointSlices, or not started by this gateway)",
                    url,
                    ", ".join(announcement.models),
                )
            return
        self._metrics.announcements.labels("accepted").inc()
        self._cold_starts.announced(announcement, vouched)
        ttl_s = MISSED_ANNOUNCEMENTS * announcement.interval_s
        if state == "starting":
            for model in vouched:
                self._endpoints.announce(model, url, "starting", None, ttl_s)
            return
        if state == "ready":
            vouched = tuple(model for model in vouched if not self._endpoints.renew(model, url, ttl_s))
        if vouched and self._checks.due((url, state)):
            self._background.spawn(self._confirm(url, state, vouched, ttl_s))

    def _parse(self, data: str) -> wire.Announcement | None:
        if len(data) > wire.MAX_ANNOUNCEMENT_BYTES:  # characters: at least as many bytes
            self._metrics.announcements.labels("oversized").inc()
            self._logs["malformed"].warning(
                "dropping a replica announcement of %d characters (at most %d): %r...",
                len(data),
                wire.MAX_ANNOUNCEMENT_BYTES,
                data[:100],  # not the whole of it through repr
            )
            return None
        try:
            return wire.Announcement.model_validate_json(data)
        except ValidationError:
            self._metrics.announcements.labels("malformed").inc()
            self._logs["malformed"].warning("dropping a malformed replica announcement: %r", data[:200])
            return None

    async def _confirm(self, url: str, state: wire.ReplicaState, models: Sequence[str], ttl_s: float) -> None:
        """Apply a ready or stopping announcement for ``models`` as far as the replica's ``/readyz`` agrees."""
        report = await self._checks.read((url, state))
        serving = [model for model in models if report is not None and report.serves(model)]
        if state == "ready":
            assert report is not None or not serving
            agreed = [model for model in serving if self._endpoints.announce(model, url, "ready", report, ttl_s)]
            if report is not None:
                self._timings(url, report, agreed)
        else:  # stopping: believed unless the replica answers that it serves the model
            agreed = [model for model in models if model not in serving]
            for model in agreed:
                self._endpoints.announce(model, url, "stopping", None, ttl_s)
        if len(agreed) < len(models):
            self._metrics.announcements.labels("unconfirmed").inc()
            self._logs["unconfirmed"].warning(
                "not believing that %s is %s for %.200s: its %s does not say so",
                url,
                state,
                ", ".join(model for model in models if model not in agreed),
                wire.READY_PATH,
            )

    def _timings(self, url: str, report: wire.ReadyBody, models: Sequence[str]) -> None:
        """The replica's own account of its start, once per replica."""
        if report.startup is None or not models or self._timed.get(url) == report.startup:
            return
        self._timed[url] = report.startup
        for model in models:
            self._cold_starts.replica_started(model, report.startup)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._background.cancel()

    async def drain(self) -> None:
        """Wait for the checks under way (tests)."""
        await self._background.drain()

    async def _expire(self) -> None:
        self._endpoints.expire()
        self._checks.forget_before(self._clock() - MIN_CHECK_INTERVAL_S)
        await asyncio.sleep(EXPIRY_CHECK_S)  # a sweep's period, not a wait for an event
