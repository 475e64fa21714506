"""Each model's state as ``python -m gateway status`` shows it: read from Redis and a replica source, never written.

The keep-alive is recomputed here from what the leader's autoscaler decides on (``gateway.scaling.gaps``): the
idle gaps it stored, the typical cold start and the model's settings go through the same pure rule
(``GapLearner.decision``), so it is what the leader holds once it has looked at the model with those gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.backends import Replicas
from gateway.queue.stream import Load, RequestQueue
from gateway.replicas.coldstarts import RedisDurations
from gateway.scaling.gaps import RedisGapStore
from gateway.scaling.keepalive import GapLearner, KeepAlive, fixed
from gateway.scaling.rules import idle_threshold_s
from gateway.settings import ModelSettings
from wire.redis_url import RedisClient

#: What a model is doing, as ``ModelStatus.state`` says it (the JSON's ``state``).
STATES = ("unknown", "scaling_up", "scaling_down", "busy", "prewarming", "idle", "at_rest")


@dataclass(frozen=True)
class Served:
    """A catalogued model as a replica source sees it."""

    settings: ModelSettings
    #: Its scaling unit: the model itself, its pool, or the Deployment serving it.
    unit: str
    #: None: the source could not tell (the local gateway is not running, or has not looked at it yet).
    replicas: Replicas | None
    #: Served by a pool runtime; then ``pool`` may say by state how many ready replicas hold it.
    pooled: bool = False
    #: Ready pool replicas holding the model, by state (``active``, ``parked``, ``absent``); None: not known.
    pool: Mapping[str, int] | None = None


class ReplicaSource(Protocol):
    """Where ``status`` reads the catalogue and each model's replicas (read-only)."""

    #: Where the replicas come from, for the reader ("gateway http://...", "kubernetes").
    describe: str

    async def served(self) -> list[Served]: ...


@dataclass(frozen=True)
class ModelStatus:
    served: Served
    load: Load
    #: Seconds from scale-up to ready, smoothed over recent cold starts (what ``Retry-After`` uses); None: none yet.
    cold_start_s: float | None
    keep_alive: KeepAlive

    @property
    def name(self) -> str:
        return self.served.settings.name

    @property
    def state(self) -> str:
        """One of ``STATES``: replicas still starting or stopping first, then demand, then idleness."""
        now, settings, idle_for = self.served.replicas, self.served.settings, self.load.idle_for_s
        if now is None:
            return "unknown"
        if now.desired > now.ready:
            return "scaling_up"
        if now.desired < now.ready:
            return "scaling_down"
        if self.load.demand > 0:
            return "busy"
        if idle_for is not None and self.keep_alive.prewarming(idle_for):
            return "prewarming"
        return "idle" if now.desired > settings.min_replicas else "at_rest"

    @property
    def scale_down_in_s(self) -> float | None:
        """Idle seconds left before the scaler takes the model to ``min-replicas`` (None: not idle above it)."""
        now, idle_for = self.served.replicas, self.load.idle_for_s
        if now is None or idle_for is None or self.state not in ("idle", "prewarming"):
            return None
        if self.state == "prewarming" and self.keep_alive.prewarm_until_s is not None:
            return max(0.0, self.keep_alive.prewarm_until_s - idle_for)
        return max(0.0, idle_threshold_s(self.served.settings, now, self.keep_alive) - idle_for)


async def read_report(redis: RedisClient, source: ReplicaSource, *, shortest_keep_s: float) -> list[ModelStatus]:
    """Every model ``source`` serves, by name. ``shortest_keep_s``: the autoscaler's period (the keep-alive rule's
    input). Raises ``QueueUnavailable`` if Redis cannot be read, ``BackendError`` if the source cannot."""
    served = sorted(await source.served(), key=lambda s: s.settings.name)
    names = [s.settings.name for s in served]
    # The queue's bound plays no part in a read.
    loads = await RequestQueue(redis=redis, max_queue_per_model=1).peek(names)
    durations, gaps = RedisDurations(redis), RedisGapStore(redis)
    cold_starts = await asyncio.gather(*(durations.get(name) for name in names))
    learned = await asyncio.gather(*(_gaps(gaps, s.settings) for s in served))
    return [
        ModelStatus(s, loads[s.settings.name], cold, keep_alive(s.settings, gap_list, cold, shortest_keep_s))
        for s, cold, gap_list in zip(served, cold_starts, learned, strict=True)
    ]


async def _gaps(store: RedisGapStore, settings: ModelSettings) -> Sequence[float] | None:
    return await store.read(settings.name) if settings.idle_policy == "adaptive" else None


def keep_alive(
    settings: ModelSettings, gaps: Sequence[float] | None, cold_start_s: float | None, shortest_keep_s: float
) -> KeepAlive:
    """The keep-alive in force for the model: its fixed ``idle-timeout`` (``gaps`` None: idle-policy fixed), or what
    the adaptive rule decides on ``gaps``."""
    if gaps is None:
        return fixed(settings, "idle-policy fixed")
    learner = GapLearner()
    learner.add(gaps)
    return learner.decision(settings, cold_start_s, shortest_keep_s)
