"""The adaptive keep-alive as the autoscaler runs it: one ``GapLearner`` per model, its gaps kept in Redis.

The rules are in ``gateway.scaling.keepalive`` (pure, shared with ``loadtest simulate``); this module feeds them what
the autoscaler already reads and keeps what they learn:

- learning costs no Redis read per look: a gap is noticed from the (demand, idle-for) the autoscaler read anyway,
  and the learned gaps live in memory;
- a gap is written to Redis when it ends (a list per model, trimmed to ``keepalive.WINDOW``: ``RPUSH`` + ``LTRIM``
  in one transaction), so idleness costs nothing and the writes follow traffic;
- the stored gaps are read once per model, at its first adaptive decision, so a restarted gateway, or a new leader,
  goes on from what was learned. Only the replica that scales down (the leader) learns and decides, so gaps are
  not recorded twice;
- the autoscaler does not look at a model at rest (at its floor) until new work wakes it; a model whose pre-warm
  lies ahead says when it wants to be looked at again (``due``), one timestamp in memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.background import Background
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.scaling.keepalive import WINDOW, GapLearner, KeepAlive, fixed
from gateway.settings import ModelSettings
from gateway.store import keys
from gateway.store.connection import converted
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.keepalive")


class GapStore(Protocol):
    """Where a model's recent idle gaps are kept (shared by all gateway replicas, kept over restarts)."""

    async def read(self, model: str) -> list[float]: ...

    async def append(self, model: str, gap_s: float) -> None: ...


class RedisGapStore:
    def __init__(self, redis: RedisClient, window: int = WINDOW) -> None:
        self._redis = redis
        self._window = window

    async def read(self, model: str) -> list[float]:
        async with converted():
            stored = await self._redis.lrange(keys.idle_gaps(model), 0, -1)
        return [int(ms) / 1000 for ms in stored]

    async def append(self, model: str, gap_s: float) -> None:
        async with converted(), self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(keys.idle_gaps(model), round(gap_s * 1000))
            pipe.ltrim(keys.idle_gaps(model), -self._window, -1)
            await pipe.execute()


class KeepAlives:
    def __init__(
        self,
        *,
        store: GapStore,
        metrics: Metrics,
        cold_start_s: Callable[[str], float | None],
        shortest_keep_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._cold_start_s = cold_start_s
        self._shortest_keep_s = shortest_keep_s
        self._clock = clock
        self._learners: dict[str, GapLearner] = {}
        self._current: dict[str, KeepAlive] = {}
        #: When (by ``clock``) a model idle at rest wants its next look: its pre-warm is due then.
        self._look_at: dict[str, float] = {}
        self._background = Background()

    def decide(self, settings: ModelSettings, demand: int, idle_for_s: float | None) -> KeepAlive | None:
        """The keep-alive for ``settings``' model after one look at it (None: its idle policy is fixed)."""
        if settings.idle_policy != "adaptive":
            return None
        name = settings.name
        learner = self._learners.get(name)
        if learner is None:
            learner = self._learners[name] = GapLearner()
            self._background.spawn(self._quietly(self._reload(name, learner)))
        gap = learner.observe(self._clock(), demand, idle_for_s)
        if gap is not None:
            self._gap_ended(settings, gap)
        decision = learner.decision(settings, self._cold_start_s(name), self._shortest_keep_s)
        previous = self._current.get(name)
        if decision != previous:
            self._current[name] = decision
            self._publish(name, decision, log_it=previous is None or previous.describe() != decision.describe())
        self._plan_look(name, decision, demand, idle_for_s)
        return decision

    def due(self, model: str) -> bool:
        """Whether ``model``'s pre-warm is due, so the autoscaler must look at it though it is at rest."""
        at = self._look_at.get(model)
        return at is not None and self._clock() >= at

    def _plan_look(self, model: str, decision: KeepAlive, demand: int, idle_for_s: float | None) -> None:
        self._look_at.pop(model, None)
        at = decision.prewarm_at_s
        if demand == 0 and idle_for_s is not None and at is not None and idle_for_s < at:
            self._look_at[model] = self._clock() + (at - idle_for_s)

    def _gap_ended(self, settings: ModelSettings, gap_s: float) -> None:
        """Count what the keep-alive in force did for this gap against what the fixed idle-timeout would have."""
        name = settings.name
        in_force = self._current.get(name)
        if in_force is not None and in_force.learned:
            cold_start_s = self._cold_start_s(name) or 0.0
            warm, fixed_warm = in_force.warm_after(gap_s, cold_start_s), fixed(settings, "").warm_after(gap_s, 0.0)
            if warm and not fixed_warm:
                self._metrics.cold_starts_avoided.labels(name).inc()
            elif fixed_warm and not warm:
                self._metrics.cold_starts_added.labels(name).inc()
        self._background.spawn(self._quietly(self._store.append(name, gap_s)))

    def _publish(self, model: str, decision: KeepAlive, *, log_it: bool) -> None:
        if log_it:  # a change of the cold start by milliseconds moves the pre-warm but says nothing new
            log.info("keep-alive of %s: %s", model, decision.describe())
        gauge = self._metrics.keep_alive_seconds
        gauge.labels(model, "keep").set(decision.keep_s)
        gauge.labels(model, "prewarm_at").set(decision.prewarm_at_s if decision.prewarm_at_s is not None else 0.0)
        until = decision.prewarm_until_s if decision.prewarm_until_s is not None else 0.0
        gauge.labels(model, "prewarm_until").set(until if math.isfinite(until) else math.inf)
        self._metrics.keep_alive_learned.labels(model).set(1.0 if decision.learned else 0.0)

    async def _reload(self, model: str, learner: GapLearner) -> None:
        learner.add(await self._store.read(model))

    async def drain(self) -> None:
        """Wait for the reads and writes started so far (tests; shutdown)."""
        await self._background.drain()

    @staticmethod
    async def _quietly(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except QueueUnavailable as exc:  # only the learning suffers; the request path reports Redis itself
            log.debug("keep-alive bookkeeping skipped: %r", exc)
