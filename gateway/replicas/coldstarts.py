"""Cold starts as the gateway sees them: when one began, what its replica is doing, how long they usually take.

The scaler says when a model starts from zero (``began``) and when its first replica is ready (``ready``); the
replicas' announcements say which start-up phase they are in and, once ready, where their time went (metric
``kaltstart_cold_start_seconds`` by phase). How long a cold start takes is kept in Redis per model, smoothed over
the last few, so that every gateway replica can tell a waiting client when to come back (``Retry-After`` on a
cold-start 503) and a streaming client how far along it is (``progress``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import wire
from gateway.background import Background
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.store import keys
from gateway.store.connection import converted
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.coldstarts")

#: Weight of the newest cold start in the smoothed duration kept in Redis.
SMOOTHING = 0.5
#: Bounds of a Retry-After derived from measured cold starts, in seconds.
RETRY_AFTER_S = (1, 120)

_PHASES: dict[str, str] = {
    "standby": "claiming a standby runtime",
    "cache": "finding the weights in the node cache",
    "imports": "importing the engine",
    "load": "loading the weights",
    "warmup": "warming up",
}


def smoothed(previous_s: float | None, elapsed_s: float) -> float:
    """The typical cold start after one more measured ``elapsed_s`` (``loadtest simulate`` feeds its learner the
    same)."""
    return elapsed_s if previous_s is None else SMOOTHING * elapsed_s + (1 - SMOOTHING) * previous_s


class Durations(Protocol):
    """Where the smoothed cold-start duration per model is kept (shared by all gateway replicas)."""

    async def get(self, model: str) -> float | None: ...

    async def put(self, model: str, seconds: float) -> None: ...


class RedisDurations:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def get(self, model: str) -> float | None:
        async with converted():
            stored = await self._redis.get(keys.cold_start(model))
        return None if stored is None else float(stored)

    async def put(self, model: str, seconds: float) -> None:
        async with converted():
            await self._redis.set(keys.cold_start(model), f"{seconds:.3f}")


class ColdStarts:
    def __init__(
        self,
        *,
        durations: Durations,
        endpoints: ReadyEndpoints,
        metrics: Metrics,
        budget_s: Callable[[str], float | None] = lambda _model: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``budget_s(model)``: its cold-start-timeout (None: none), beyond which a cold start is counted as over
        budget (``kaltstart_cold_starts_over_budget_total``)."""
        self._durations = durations
        self._endpoints = endpoints
        self._metrics = metrics
        self._budget_s = budget_s
        self._clock = clock
        self._since: dict[str, float] = {}
        self._phase: dict[str, str] = {}
        self._typical: dict[str, float] = {}
        self._background = Background()

    # -- what the scaler says -----------------------------------------------------------------------------------

    def began(self, model: str) -> None:
        """``model`` is being scaled up from zero (the first of several calls counts)."""
        if model in self._since:
            return
        self._since[model] = self._clock()
        self._phase.pop(model, None)
        self._metrics.cold_starts.labels(model).inc()
        self._metrics.cold_starts_over_budget.labels(model)  # exported from 0 on, so its first count alerts
        self._background.spawn(self._quietly(self._read_typical(model)))

    def ready(self, model: str) -> None:
        """A replica of ``model`` is ready; ends its cold start, if one is running."""
        started = self._since.pop(model, None)
        self._phase.pop(model, None)
        if started is None:
            return
        elapsed = self._clock() - started
        self._count_if_over_budget(model, elapsed)
        self._metrics.cold_start_seconds.labels(model).observe(elapsed)
        self._metrics.cold_start_phases.labels(model, "scale_to_ready").observe(elapsed)
        log.info("%s is ready after a cold start of %.2f s", model, elapsed)
        self._background.spawn(self._quietly(self._remember(model, elapsed)))

    def abandoned(self, model: str) -> None:
        """Scaled back to zero before any replica was ready: the next cold start is counted anew."""
        started = self._since.pop(model, None)
        self._phase.pop(model, None)
        if started is not None:
            self._count_if_over_budget(model, self._clock() - started)

    def _count_if_over_budget(self, model: str, elapsed_s: float) -> None:
        budget_s = self._budget_s(model)
        if budget_s is not None and elapsed_s > budget_s:
            self._metrics.cold_starts_over_budget.labels(model).inc()
            log.warning("the cold start of %s took %.0f s, over its cold-start-timeout of %.0f s", model, elapsed_s,
                        budget_s)  # fmt: skip

    # -- what replicas announce ---------------------------------------------------------------------------------

    def announced(self, announcement: wire.Announcement, models: Iterable[str]) -> None:
        """A replica's announcement, for the ``models`` whose backend vouches for it (only those: the others'
        names are whatever the announcer chose): its phase while starting."""
        for model in models:
            if announcement.state == "starting" and announcement.phase is not None:
                self._phase[model] = announcement.phase

    def replica_started(self, model: str, timings: wire.StartupTimings) -> None:
        """A replica's own account of its start (once per replica)."""
        phases = {
            "process": timings.process_s,
            "cache": timings.cache_s,
            "imports": timings.imports_s,
            "load": timings.load_s,
            "warmup": timings.warmup_s,
            "replica_total": timings.total_s,
        }
        for phase, seconds in phases.items():
            if seconds is not None:
                self._metrics.cold_start_phases.labels(model, phase).observe(seconds)

    def dispatched(self, model: str, seconds: float) -> None:
        """The first batch went to a replica ``seconds`` after it became ready, with requests waiting for it."""
        self._metrics.cold_start_phases.labels(model, "ready_to_dispatch").observe(seconds)

    # -- what clients are told ----------------------------------------------------------------------------------

    def is_cold(self, model: str) -> bool:
        """No replica of ``model`` is ready: a request now waits for a start."""
        return not self._endpoints.get(model)

    def retry_after_s(self, model: str, fallback: int) -> int:
        """When a client that gave up waiting should come back: the typical cold start's remaining time."""
        typical = self._typical.get(model)
        if typical is None:
            return fallback
        started = self._since.get(model)
        left = typical - (self._clock() - started) if started is not None else typical
        if left <= 0:  # slower than usual: no better guess than the configured one
            return fallback
        return max(RETRY_AFTER_S[0], min(RETRY_AFTER_S[1], math.ceil(left)))

    def typical_s(self, model: str) -> float | None:
        """The model's typical cold start, once one was measured (or read back) here."""
        return self._typical.get(model)

    def progress(self, model: str, waited_s: float) -> str:
        """One line for a streaming client waiting through a cold start (an SSE comment)."""
        phase = self._phase.get(model)
        doing = _PHASES.get(phase, phase) if phase else "starting a replica"
        typical = self._typical.get(model)
        usual = f", usually ready after {typical:.0f} s" if typical is not None else ""
        return f"kaltstart: {model} is cold: {doing}; waited {waited_s:.1f} s{usual}"

    # -- Redis ---------------------------------------------------------------------------------------------------

    async def _read_typical(self, model: str) -> None:
        stored = await self._durations.get(model)
        if stored is not None:
            self._typical[model] = stored

    async def _remember(self, model: str, elapsed: float) -> None:
        await self._read_typical(model)
        typical = smoothed(self._typical.get(model), elapsed)
        self._typical[model] = typical
        await self._durations.put(model, typical)

    async def drain(self) -> None:
        """Wait for the bookkeeping started so far (tests; shutdown)."""
        await self._background.drain()

    @staticmethod
    async def _quietly(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except QueueUnavailable as exc:  # only the estimate suffers; the request path reports Redis itself
            log.debug("cold-start bookkeeping skipped: %r", exc)
