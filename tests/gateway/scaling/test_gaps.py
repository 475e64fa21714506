"""The adaptive keep-alive as the autoscaler runs it: gaps stored when they end (never while idle), read back once
after a restart, the pre-warm written through the scaler, and the gaps' Redis list."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from gateway.backends import Replicas
from gateway.catalog import ModelCatalog
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.autoscaler import Scaler
from gateway.scaling.gaps import KeepAlives, RedisGapStore
from gateway.scaling.keepalive import MIN_GAPS
from gateway.settings import ModelSettings
from gateway.store import keys
from tests.gateway.scaling.test_autoscaler import Clock, FakeBackend, FakeDemand, FakeFence, MemoryDurations
from tests.harness import sample

ADAPTIVE = ModelSettings(name="m", idle_timeout_s=300, idle_policy="adaptive", cold_start_cost_s=300)
PERIODIC = [600.0] * 20


class MemoryGaps:
    def __init__(self, **stored: list[float]) -> None:
        self.stored = stored
        self.reads: list[str] = []

    async def read(self, model: str) -> list[float]:
        self.reads.append(model)
        return list(self.stored.get(model, []))

    async def append(self, model: str, gap_s: float) -> None:
        self.stored.setdefault(model, []).append(gap_s)


class Learning:
    def __init__(self, store: MemoryGaps, cold_start_s: float | None = 20.0) -> None:
        self.store, self.clock, self.metrics = store, Clock(), Metrics()
        self.keep_alives = KeepAlives(
            store=store,
            metrics=self.metrics,
            cold_start_s=lambda _model: cold_start_s,
            shortest_keep_s=1.0,
            clock=self.clock,
        )

    def look(self, after_s: float, demand: int, idle_for_s: float, settings: ModelSettings = ADAPTIVE) -> None:
        self.clock.now += after_s
        self.keep_alives.decide(settings, demand, idle_for_s)

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.metrics.registry, name, **labels)


@pytest.mark.unit
async def test_what_was_learned_is_read_back_once_after_a_restart() -> None:
    learning = Learning(MemoryGaps(m=PERIODIC))
    first = learning.keep_alives.decide(ADAPTIVE, 0, 0.0)
    assert first is not None and not first.learned  # the read is under way: the fixed timeout meanwhile
    await learning.keep_alives.drain()
    decision = learning.keep_alives.decide(ADAPTIVE, 0, 1.0)
    assert decision is not None and decision.learned and decision.prewarm_at_s is not None
    learning.look(1.0, 0, 2.0)
    assert learning.store.reads == ["m"]
    assert learning.metric("kaltstart_keep_alive_learned", model="m") == 1
    assert learning.metric("kaltstart_keep_alive_seconds", model="m", window="prewarm_at") == decision.prewarm_at_s


@pytest.mark.unit
async def test_a_gap_is_stored_when_it_ends_and_idleness_stores_nothing() -> None:
    learning = Learning(MemoryGaps())
    learning.look(0.0, 0, 0.0)
    for second in range(1, 100):
        learning.look(1.0, 0, float(second))
    await learning.keep_alives.drain()
    assert learning.store.stored == {}  # 100 looks at an idle model: no write
    learning.look(1.0, 1, 0.0)
    await learning.keep_alives.drain()
    assert learning.store.stored == {"m": [100.0]}


@pytest.mark.unit
async def test_a_fixed_model_learns_nothing() -> None:
    learning = Learning(MemoryGaps())
    assert learning.keep_alives.decide(ModelSettings(name="m"), 0, 0.0) is None
    await learning.keep_alives.drain()
    assert learning.store.reads == []


@pytest.mark.unit
async def test_cold_starts_avoided_are_counted_against_the_fixed_timeout() -> None:
    learning = Learning(MemoryGaps(m=PERIODIC))
    learning.look(0.0, 0, 0.0)
    await learning.keep_alives.drain()
    learning.look(600.0, 0, 600.0)
    learning.look(1.0, 1, 0.0)  # a gap of 600 s ended warm (pre-warmed); 300 s idle-timeout: cold
    assert learning.metric("kaltstart_cold_starts_avoided_total", model="m") == 1
    learning.look(1.0, 0, 0.0)
    learning.look(100.0, 0, 100.0)
    learning.look(1.0, 1, 0.0)  # 100 s: dropped after 2 s, before the pre-warm; the fixed timeout kept it
    assert learning.metric("kaltstart_cold_starts_added_total", model="m") == 1


class CountingDemand(FakeDemand):
    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    async def loads(self, models: Sequence[str]) -> dict[str, Load]:
        self.read += models
        return await super().loads(models)


class ScalerSetup:
    """The autoscaler with a learned keep-alive, its clock moved with the model's idleness (idle since 1000)."""

    def __init__(self, store: MemoryGaps, *, leader: bool = True) -> None:
        self.clock, self.metrics, self.endpoints = Clock(), Metrics(), ReadyEndpoints()
        self.backend, self.demand, self.fence = FakeBackend(), CountingDemand(), FakeFence()
        durations = MemoryDurations()
        durations.stored["m"] = 20.0
        self.cold = ColdStarts(durations=durations, endpoints=self.endpoints, metrics=self.metrics, clock=self.clock)
        keep_alives = KeepAlives(
            store=store, metrics=self.metrics, cold_start_s=self.cold.typical_s, shortest_keep_s=1.0, clock=self.clock
        )
        self.scaler = Scaler(
            catalog=ModelCatalog((ADAPTIVE,)),
            queue=self.demand,
            fence=self.fence,
            backend=self.backend,
            endpoints=self.endpoints,
            metrics=self.metrics,
            cold_starts=self.cold,
            interval_s=1.0,
            may_scale_down=lambda: leader,
            keep_alives=keep_alives,
        )
        self.keep_alives = keep_alives

    async def tick_at(self, idle_for_s: float, demand: int = 0) -> None:
        self.clock.now = 1000.0 + idle_for_s
        self.demand.scripted["m"] = Load(queued=demand, in_flight=0, idle_for_s=idle_for_s)
        await self.scaler.tick()
        await self.keep_alives.drain()


@pytest.mark.unit
async def test_the_scaler_drops_the_replica_early_and_pre_warms_it_before_the_expected_request() -> None:
    s = ScalerSetup(MemoryGaps(m=PERIODIC))
    s.cold.began("m")  # the typical cold start (20 s) is read with the model's first cold start
    await s.cold.drain()
    s.cold.abandoned("m")
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=1)
    await s.tick_at(0.0)  # first look: the gaps are read
    await s.tick_at(1.0)
    keep_alive = s.keep_alives.decide(ADAPTIVE, 0, 1.0)
    assert keep_alive is not None and keep_alive.prewarm_at_s is not None
    await s.tick_at(keep_alive.keep_s)
    assert s.backend.calls == [("down", "m", 0, False)]
    assert s.fence.holds == [(["m"], keep_alive.keep_s)]  # the fence re-checks the learned keep-alive
    s.demand.read.clear()
    for idle in range(math.ceil(keep_alive.keep_s) + 1, math.ceil(keep_alive.prewarm_at_s)):
        await s.tick_at(idle)
    assert s.demand.read == [] and len(s.backend.calls) == 1  # at rest: not read, not touched
    await s.tick_at(keep_alive.prewarm_at_s)  # due: looked at, pre-warmed
    assert s.backend.calls[1:] == [("up", "m", 1, False)]
    assert s.metrics.registry.get_sample_value("kaltstart_prewarms_total", {"model": "m"}) == 1


@pytest.mark.unit
async def test_only_the_replica_that_scales_down_learns_and_pre_warms() -> None:
    store = MemoryGaps(m=PERIODIC)
    s = ScalerSetup(store, leader=False)
    await s.tick_at(0.0)
    await s.tick_at(500.0)
    s.scaler.wake("m")  # a request came
    await s.tick_at(0.0, demand=1)
    assert store.reads == [] and store.stored["m"] == PERIODIC
    assert s.backend.calls == [("up", "m", 1, False)]  # demand only


async def test_gaps_are_kept_in_a_trimmed_redis_list(redis: Redis) -> None:
    store = RedisGapStore(redis, window=MIN_GAPS)
    for gap in range(1, MIN_GAPS + 3):
        await store.append("m", gap + 0.25)
    assert await store.read("m") == [gap + 0.25 for gap in range(3, MIN_GAPS + 3)]
    assert await redis.llen(keys.idle_gaps("m")) == MIN_GAPS
    assert await store.read("other") == []
