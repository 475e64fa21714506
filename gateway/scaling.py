"""Turning demand into replicas: at once on the request path (0 -> 1), and periodically for the rest.

The backend is seen only through ``ReplicaControl``, the small interface this module needs; the local backend
(processes) and the Kubernetes backend (``deployments/scale``) both provide it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway import policy
from gateway.catalog import ModelCatalog
from gateway.endpoints import ReadyEndpoints
from gateway.errors import KaltstartError
from gateway.metrics import Metrics
from gateway.policy import Replicas
from gateway.queue import RequestQueue

log = logging.getLogger("kaltstart.scaling")

StillIdle = Callable[[], Awaitable[bool]]


class ReplicaControl(Protocol):
    def replicas(self, model: str) -> Replicas:
        """The model's replicas as last seen (cheap: no I/O)."""
        ...

    async def scale_up(self, model: str, at_least: int) -> None:
        """Make sure at least ``at_least`` replicas are wanted. Never lowers a count."""
        ...

    async def scale_down(self, model: str, to: int, still_idle: StillIdle) -> bool:
        """Lower the wanted count to ``to`` if ``still_idle()`` holds when checked right before the write.
        Returns whether it scaled."""
        ...


class Scaler:
    def __init__(
        self,
        catalog: ModelCatalog,
        queue: RequestQueue,
        backend: ReplicaControl,
        endpoints: ReadyEndpoints,
        metrics: Metrics,
        interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self._queue = queue
        self._backend = backend
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._endpoints = endpoints
        self._cold_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        endpoints.subscribe(self._on_endpoints)

    async def ensure_capacity(self, model: str) -> None:
        """Request path: a model with no replica wanted gets one now, not at the next tick."""
        if self._backend.replicas(model).desired > 0:
            return
        self._cold_since.setdefault(model, self._clock())
        self._metrics.cold_starts.labels(model).inc()
        log.info("scaling %s from zero for a waiting request", model)
        try:
            await self._backend.scale_up(model, 1)
        except KaltstartError as exc:  # the next tick tries again; the request waits in the queue meanwhile
            log.error("scale-up of %s failed: %s", model, exc)

    def _on_endpoints(self, model: str) -> None:
        started = self._cold_since.get(model)
        if started is not None and self._endpoints.get(model):
            del self._cold_since[model]
            elapsed = self._clock() - started
            self._metrics.cold_start_seconds.labels(model).observe(elapsed)
            log.info("%s is ready after a cold start of %.2f s", model, elapsed)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._interval_s)  # a control loop's period, not a wait for an event

    async def tick(self) -> None:
        for settings in self._catalog.all():
            try:
                await self._reconcile(settings.name)
            except KaltstartError as exc:
                log.error("autoscaler: %s: %s", settings.name, exc)

    async def tick_metrics(self) -> None:
        """Refresh the queue and replica gauges (for a scrape between ticks)."""
        for settings in self._catalog.all():
            try:
                load = await self._queue.load(settings.name)
            except KaltstartError:
                continue
            self._metrics.observe_model(
                settings.name, load.queued, load.in_flight, self._backend.replicas(settings.name)
            )

    async def _reconcile(self, model: str) -> None:
        settings = self._catalog.get(model)
        load = await self._queue.load(model)
        now = self._backend.replicas(model)
        self._metrics.observe_model(model, load.queued, load.in_flight, now)
        wanted = policy.desired_replicas(settings, load.demand, load.idle_for_s, now)
        if wanted > now.desired:
            log.info("scaling %s up to %d (demand %d)", model, wanted, load.demand)
            if now.desired == 0:
                self._cold_since.setdefault(model, self._clock())
            await self._backend.scale_up(model, wanted)
        elif wanted < now.desired:

            async def still_idle() -> bool:
                again = await self._queue.load(model)
                current = self._backend.replicas(model)
                return policy.desired_replicas(settings, again.demand, again.idle_for_s, current) <= wanted

            if await self._backend.scale_down(model, wanted, still_idle):
                log.info("scaled %s down to %d (idle %.0f s)", model, wanted, load.idle_for_s or 0)
