"""Turning demand into replicas: at once on the request path (0 -> 1), and periodically for the rest.

The backend is seen only through ``ReplicaControl``, the small interface this module needs; the local backend
(processes) and the Kubernetes backend (``deployments/scale``) both provide it. Models that share one set of
replicas (one Deployment serving several model names) form a *scaling unit*: demand adds up over the unit, and
the unit is idle only when all its models are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from gateway.backends import ReplicaControl
from gateway.background import Loop
from gateway.catalog import ModelCatalog
from gateway.errors import KaltstartError
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling import rules as policy
from gateway.scaling.gaps import KeepAlives
from gateway.scaling.keepalive import KeepAlive
from gateway.scaling.parking import unit_idle
from gateway.scaling.pools import PoolKeeper
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.scaling")


class Demand(Protocol):
    """Where models' load is read (the request queue)."""

    async def loads(self, models: Sequence[str]) -> dict[str, Load]:
        """Several models' load in one round trip."""
        ...


class ScaleDownFence(Protocol):
    """See ``gateway.queue.fence``: held while a scale-down is written, only if every model is still idle."""

    def hold(self, models: Sequence[str], idle_s: float) -> AbstractAsyncContextManager[bool]: ...


class Scaler:
    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        queue: Demand,
        fence: ScaleDownFence,
        backend: ReplicaControl,
        endpoints: ReadyEndpoints,
        metrics: Metrics,
        cold_starts: ColdStarts,
        interval_s: float,
        may_scale_down: Callable[[], bool] = lambda: True,
        keep_alives: KeepAlives | None = None,
        pools: PoolKeeper | None = None,
    ) -> None:
        self._catalog = catalog
        self._queue = queue
        self._fence = fence
        self._backend = backend
        self._metrics = metrics
        self._interval_s = interval_s
        self._may_scale_down = may_scale_down
        self._endpoints = endpoints
        self._cold_starts = cold_starts
        self._keep_alives = keep_alives
        #: Parks and unloads idle models of pool replicas (``gateway.scaling.pools``).
        self._pools = pools
        self._tick_listeners: list[Callable[[], None]] = []
        #: The request path's scale-up in flight, per (model, recheck).
        self._scaling_up: dict[tuple[str, bool], asyncio.Task[None]] = {}
        self._loop = Loop("autoscaler", self._tick_and_wait)
        #: Models with new work since the last pass, looked at even if at rest; all of them at the first pass.
        self._woken: set[str] = set()
        self._woken_all = True
        self._known = {m.name for m in catalog.all()}  # the first pass looks at these
        endpoints.subscribe(self._on_endpoints)
        catalog.subscribe(self._on_catalog)

    def _on_catalog(self) -> None:
        """A model new to the catalog is looked at once (it may have requests queued by another gateway)."""
        names = {m.name for m in self._catalog.all()}
        self._woken |= names - self._known
        self._known = names

    def wake(self, model: str) -> None:
        """New work on ``model`` (``""``: on any model, maybe): the next pass looks at it even if it is at rest.
        (A ``gateway.queue.signals`` listener.)"""
        if model:
            self._woken.add(model)
        else:
            self._woken_all = True

    async def ensure_capacity(self, model: str, *, recheck: bool = False) -> None:
        """Request path: a model with no replica wanted gets one now, not at the next tick. Concurrent requests
        for a cold model share one scale-up in flight per gateway replica (those that waited at the fence share
        one with a fresh count), so a burst costs one read and one write of the backend, not one per request."""
        if self._backend.replicas(model).desired > 0 and not recheck:
            return
        key = (model, recheck)
        task = self._scaling_up.get(key)
        if task is None:
            task = asyncio.create_task(self._scale_from_request(model, recheck), name=f"scale-up-{model}")
            self._scaling_up[key] = task
            task.add_done_callback(lambda done: self._forget_scale_up(key, done))
        await asyncio.shield(task)  # one request leaving does not cancel the others' scale-up

    def _forget_scale_up(self, key: tuple[str, bool], task: asyncio.Task[None]) -> None:
        if self._scaling_up.get(key) is task:
            del self._scaling_up[key]

    async def _scale_from_request(self, model: str, recheck: bool) -> None:
        desired = self._backend.replicas(model).desired
        if desired == 0:
            self._cold_started(model)
            log.info("scaling %s from zero for a waiting request", model)
        try:
            await self._scale_up(model, 1, fresh=recheck)
        except KaltstartError as exc:  # the next tick tries again; the request waits in the queue meanwhile
            log.error("scale-up of %s failed: %s", model, exc)

    async def _scale_up(self, model: str, to: int, fresh: bool = False) -> None:
        if await self._backend.scale_up(model, to, fresh=fresh):
            self._metrics.scale_writes.labels(model, "up").inc()

    def _cold_started(self, model: str) -> None:
        self._cold_starts.began(model)

    def _on_endpoints(self, model: str) -> None:
        if self._endpoints.get(model):
            self._cold_starts.ready(model)

    async def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        if self._pools is not None:
            await self._pools.close()

    async def _tick_and_wait(self) -> None:
        await self.tick()
        await asyncio.sleep(self._interval_s)  # a control loop's period, not a wait for an event

    async def tick(self) -> None:
        """One pass of the rules over the scaling units that may need a change: those not at rest, and those
        woken by new work. Their loads are read in one round trip; a unit that fails does not stop the others.

        A unit at rest (its floor of replicas, none starting) and without new work is not read at all: with no
        demand the rules keep it where it is, and new demand always comes with a work signal. So a gateway with a
        thousand idle models sends Redis nothing for them."""
        units = self._units_to_look_at()
        try:
            loads = await self._queue.loads([m.name for unit in units for m in unit])
        except KaltstartError as exc:
            log.error("autoscaler: %s", exc)
            self._woken.update(m.name for unit in units for m in unit)  # look again at the next pass
            loads = {}
        for unit in units if loads else []:
            try:
                await self._reconcile(unit, [loads[m.name] for m in unit])
            except KaltstartError as exc:
                log.error("autoscaler: %s: %s", unit[0].name, exc)
                self._woken.add(unit[0].name)
        for listener in list(self._tick_listeners):
            listener()

    def _units_to_look_at(self) -> list[list[ModelSettings]]:
        """The units to read this pass. The others' gauges are kept current from memory: nothing queued or in
        flight (they had no demand when last read and no work since), and the backend's replica count."""
        woken, everything = self._woken, self._woken_all
        self._woken, self._woken_all = set(), False
        units = []
        for unit in self._catalog.units():
            if (
                everything
                or not self._at_rest(unit)
                or woken & {m.name for m in unit}
                or self._prewarm_due(unit)
                or self._parking_due(unit)
            ):
                units.append(unit)
            else:
                for m in unit:
                    self._observe(m.name, Load(queued=0, in_flight=0, idle_for_s=None))
        return units

    def _at_rest(self, unit: list[ModelSettings]) -> bool:
        now = self._backend.replicas(unit[0].name)
        return now.desired == unit[0].min_replicas and now.starting == 0

    def subscribe_ticks(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every pass; returns an unsubscribe function.

        Test seam: only the tests use it (``tests/kube/probes.py``), to wait for passes of a running gateway's
        autoscaler instead of sleeping. It stays here because the scaler is built inside ``create_app`` and its
        loop calls ``tick`` directly: a test could only observe passes otherwise by patching the instance."""
        self._tick_listeners.append(listener)
        return lambda: self._tick_listeners.remove(listener)

    def _observe(self, model: str, load: Load) -> None:
        self._metrics.observe_model(model, load.queued, load.in_flight, self._backend.replicas(model))

    async def _reconcile(self, unit: list[ModelSettings], loads: list[Load]) -> None:
        settings, name = unit[0], unit[0].name
        for m, load in zip(unit, loads, strict=True):
            self._observe(m.name, load)
        pooled = self._pools is not None and any(self._catalog.pooled(m.name) for m in unit)
        if self._pools is not None and pooled and self._may_scale_down():  # the leader alone moves pool models
            self._pools.apply(*self._pooled(unit, loads))
        demand = sum(load.demand for load in loads)
        if demand > 0:
            self._woken.add(name)  # while it has demand, look again at every pass (a failed scale-up is retried)
        now = self._backend.replicas(name)
        keep_alive: KeepAlive | None
        fence_keep: KeepAlive | None
        if pooled:
            idle, keep_alive, fence_keep = self._pool_idle(unit, loads)
        else:
            idles = [load.idle_for_s for load in loads if load.idle_for_s is not None]
            idle = min(idles) if idles else None
            keep_alive = fence_keep = self._keep_alive(settings, demand, idle)
        wanted = policy.desired_replicas(settings, demand, idle, now, keep_alive)
        if wanted > now.desired:
            if demand == 0 and keep_alive is not None and idle is not None and keep_alive.prewarming(idle):
                log.info("pre-warming %s after %.0f s idle: %s", name, idle, keep_alive.describe())
                self._metrics.prewarms.labels(name).inc()
            else:
                log.info("scaling %s up to %d (demand %d)", name, wanted, demand)
            if now.desired == 0:
                self._cold_started(name)
            await self._scale_up(name, wanted)
        elif wanted < now.desired and self._may_scale_down():
            await self._scale_down(unit, wanted, policy.idle_threshold_s(settings, now, fence_keep))

    def _pooled(self, unit: list[ModelSettings], loads: list[Load]) -> tuple[list[ModelSettings], list[Load]]:
        """The unit's pool models and their loads."""
        pairs = [(m, load) for m, load in zip(unit, loads, strict=True) if self._catalog.pooled(m.name)]
        return [m for m, _ in pairs], [load for _, load in pairs]

    def _pool_idle(self, unit: list[ModelSettings], loads: list[Load]) -> tuple[float | None, KeepAlive, KeepAlive]:
        """Rule 3 of a pool (``gateway.scaling.parking``): its replicas go once every model has been idle for its
        own unload threshold (learned or ``idle-timeout``), as the replica rules' (idle-for, keep-alive) pair,
        and the keep-alive the fence checks (each model idle for at least the shortest threshold)."""
        assert self._pools is not None
        pools = self._pools
        afters = [pools.unload_after_s(m) if self._catalog.pooled(m.name) else m.idle_timeout_s for m in unit]
        idle, keep = unit_idle([load.idle_for_s for load in loads], afters)
        reason = "pool: every model idle for its own unload threshold"
        return idle, KeepAlive(keep_s=keep, reason=reason), KeepAlive(keep_s=min(afters), reason=reason)

    def _prewarm_due(self, unit: list[ModelSettings]) -> bool:
        """A unit at rest whose adaptive keep-alive wants a replica ahead of an expected request by now."""
        return self._keep_alives is not None and self._keep_alives.due(unit[0].name)

    def _parking_due(self, unit: list[ModelSettings]) -> bool:
        """A unit at rest (e.g. a pool kept at ``min-replicas``) with a pool model due to be parked or unloaded."""
        return self._pools is not None and self._pools.due(unit)

    def _keep_alive(self, settings: ModelSettings, demand: int, idle_for_s: float | None) -> KeepAlive | None:
        """``idle-policy = "adaptive"``: what it learned (``gateway.scaling.gaps``). Only the replica that scales down
        learns and decides; the others apply the fixed rules, which never scale up an idle model."""
        if self._keep_alives is None or not self._may_scale_down():
            return None
        return self._keep_alives.decide(settings, demand, idle_for_s)

    async def _scale_down(self, unit: list[ModelSettings], to: int, idle_s: float) -> None:
        """Write the lower count only while every model of the unit is fenced (see ``gateway.queue.fence``): requests
        arriving meanwhile wait at the door and then scale the unit up again."""
        name = unit[0].name
        async with self._fence.hold([m.name for m in unit], idle_s) as idle:
            if idle and await self._backend.scale_down(name, to):
                self._metrics.scale_writes.labels(name, "down").inc()
                log.info("scaled %s down to %d after %.0f s idle", name, to, idle_s)
                if to == 0:  # a cold start that never became ready ends here; the next one is counted anew
                    self._cold_starts.abandoned(name)
