"""The autoscaler on fakes of its seams (backend, demand, fence) and a clock the test moves."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

import wire
from gateway.backends import NO_REPLICAS, Replicas
from gateway.catalog import ModelCatalog
from gateway.errors import BackendError, UnknownModel
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.autoscaler import Scaler
from gateway.scaling.pools import PoolKeeper, PoolMove
from gateway.settings import ModelSettings
from tests.harness import sample

pytestmark = pytest.mark.unit

M = ModelSettings(name="m", max_replicas=3, idle_timeout_s=60, cold_start_timeout_s=300, target_queue_per_replica=10)
IDLE = Load(queued=0, in_flight=0, idle_for_s=0.0)


class FakeBackend:
    """Holds a ``Replicas`` per model and records every scale call as (direction, model, count, fresh)."""

    def __init__(self) -> None:
        self.replicas_of: dict[str, Replicas] = {}
        self.calls: list[tuple[str, str, int, bool]] = []
        self.unknown: set[str] = set()
        self.broken = False

    def replicas(self, model: str) -> Replicas:
        return self.replicas_of.get(model, NO_REPLICAS)

    def _check(self, model: str) -> None:
        if model in self.unknown:
            raise UnknownModel(f"no model {model}")
        if self.broken:
            raise BackendError("the API said no")

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        self.calls.append(("up", model, at_least, fresh))
        self._check(model)
        now = self.replicas(model)
        if at_least <= now.desired:
            return False
        self.replicas_of[model] = Replicas(desired=at_least, ready=now.ready)
        return True

    async def scale_down(self, model: str, to: int) -> bool:
        self.calls.append(("down", model, to, False))
        self._check(model)
        now = self.replicas(model)
        if to >= now.desired:
            return False
        self.replicas_of[model] = Replicas(desired=to, ready=min(now.ready, to))
        return True


class FakeDemand:
    """A scripted ``Load`` per model (idle since just now by default)."""

    def __init__(self) -> None:
        self.scripted: dict[str, Load] = {}
        #: The models of each ``loads`` call.
        self.asked: list[list[str]] = []

    async def load(self, model: str) -> Load:
        return self.scripted.get(model, IDLE)

    async def loads(self, models: Sequence[str]) -> dict[str, Load]:
        self.asked.append(list(models))
        return {m: await self.load(m) for m in models}


class FakeFence:
    """Records each hold as (models, idle_s); grants it unless told to refuse."""

    def __init__(self) -> None:
        self.holds: list[tuple[list[str], float]] = []
        self.refuse = False

    @contextlib.asynccontextmanager
    async def hold(self, models: Sequence[str], idle_s: float) -> AsyncIterator[bool]:
        self.holds.append((list(models), idle_s))
        yield not self.refuse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryDurations:
    def __init__(self) -> None:
        self.stored: dict[str, float] = {}

    async def get(self, model: str) -> float | None:
        return self.stored.get(model)

    async def put(self, model: str, seconds: float) -> None:
        self.stored[model] = seconds


class Setup:
    def __init__(
        self,
        *models: ModelSettings,
        may_scale_down: bool = True,
        pools: Callable[[ReadyEndpoints], PoolKeeper] | None = None,
    ) -> None:
        self.catalog = ModelCatalog(models or (M,))
        self.demand = FakeDemand()
        self.fence = FakeFence()
        self.backend = FakeBackend()
        self.endpoints = ReadyEndpoints()
        self.metrics = Metrics()
        self.clock = Clock()
        self.may_scale_down = may_scale_down
        self.durations = MemoryDurations()
        self.cold = ColdStarts(
            durations=self.durations, endpoints=self.endpoints, metrics=self.metrics, clock=self.clock
        )
        self.scaler = Scaler(
            catalog=self.catalog,
            queue=self.demand,
            fence=self.fence,
            backend=self.backend,
            endpoints=self.endpoints,
            metrics=self.metrics,
            cold_starts=self.cold,
            interval_s=1.0,
            may_scale_down=lambda: self.may_scale_down,
            pools=pools(self.endpoints) if pools else None,
        )

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.metrics.registry, name, **labels)

    def cold_starts(self, model: str = "m") -> float:
        return self.metric("kaltstart_cold_starts_total", model=model)


# The request path


async def test_a_request_scales_from_zero_at_once_and_counts_one_cold_start() -> None:
    s = Setup()
    await s.scaler.ensure_capacity("m")
    await s.scaler.ensure_capacity("m")  # the next request finds a replica wanted already
    assert s.backend.calls == [("up", "m", 1, False)]
    assert s.cold_starts() == 1
    assert s.metric("kaltstart_scale_writes_total", model="m", direction="up") == 1


async def test_concurrent_requests_for_a_cold_model_share_one_scale_up() -> None:
    s = Setup()
    called, written = asyncio.Event(), asyncio.Event()
    scale_up = s.backend.scale_up

    async def slow_scale_up(model: str, at_least: int, *, fresh: bool = False) -> bool:
        called.set()
        await written.wait()  # the API call is in flight while the other requests arrive
        return await scale_up(model, at_least, fresh=fresh)

    s.backend.scale_up = slow_scale_up  # type: ignore[method-assign]
    requests = [asyncio.create_task(s.scaler.ensure_capacity("m")) for _ in range(20)]
    fenced = [asyncio.create_task(s.scaler.ensure_capacity("m", recheck=True)) for _ in range(3)]
    await called.wait()  # the first request's scale-up is in flight, and every request has reached it
    requests[0].cancel()  # a client that leaves does not take the others' scale-up with it
    written.set()
    await asyncio.gather(*requests, *fenced, return_exceptions=True)
    assert s.backend.calls == [("up", "m", 1, False), ("up", "m", 1, True)]
    assert s.cold_starts() == 1
    await s.scaler.ensure_capacity("m")  # later requests find the replica wanted
    assert len(s.backend.calls) == 2


async def test_a_request_leaves_a_wanted_model_alone() -> None:
    s = Setup()
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=0)
    await s.scaler.ensure_capacity("m")
    assert s.backend.calls == []


async def test_a_request_that_waited_at_the_fence_rechecks_with_a_fresh_count() -> None:
    s = Setup()
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=1)  # as cached; a scale-down may just have been written
    await s.scaler.ensure_capacity("m", recheck=True)
    assert s.backend.calls == [("up", "m", 1, True)]
    assert s.cold_starts() == 0


async def test_a_failing_backend_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup()
    s.backend.broken = True
    await s.scaler.ensure_capacity("m")
    assert s.backend.calls == [("up", "m", 1, False)]
    assert any(r.levelno == logging.ERROR and "scale-up of m failed" in r.getMessage() for r in caplog.records)
    assert s.metric("kaltstart_scale_writes_total", model="m", direction="up") == 0


# The periodic tick: scaling out


@pytest.mark.parametrize(("demand", "wanted"), [(1, 1), (10, 1), (11, 2), (25, 3), (1000, 3)])
async def test_tick_scales_out_per_target_queue_up_to_max(demand: int, wanted: int) -> None:
    s = Setup()
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=1)
    s.demand.scripted["m"] = Load(queued=demand, in_flight=0, idle_for_s=0.0)
    await s.scaler.tick()
    assert s.backend.calls == ([("up", "m", wanted, False)] if wanted > 1 else [])


async def test_tick_counts_in_flight_requests_as_demand() -> None:
    s = Setup()
    s.demand.scripted["m"] = Load(queued=5, in_flight=10, idle_for_s=0.0)
    await s.scaler.tick()
    assert s.backend.calls == [("up", "m", 2, False)]
    assert s.cold_starts() == 1  # from zero


# The periodic tick: scaling down


async def test_tick_scales_down_to_min_only_after_the_idle_timeout() -> None:
    s = Setup(ModelSettings(name="m", min_replicas=1, max_replicas=3, idle_timeout_s=60))
    s.backend.replicas_of["m"] = Replicas(desired=3, ready=3)
    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=59.9)
    await s.scaler.tick()
    assert (s.backend.calls, s.fence.holds) == ([], [])

    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=60.0)
    await s.scaler.tick()
    assert s.fence.holds == [(["m"], 60.0)]
    assert s.backend.calls == [("down", "m", 1, False)]
    assert s.metric("kaltstart_scale_writes_total", model="m", direction="down") == 1


async def test_tick_reads_only_models_that_are_not_at_rest_or_have_new_work() -> None:
    s = Setup(M, dataclasses.replace(M, name="warm"), dataclasses.replace(M, name="floor", min_replicas=1))
    s.backend.replicas_of["warm"] = Replicas(desired=1, ready=1)
    s.backend.replicas_of["floor"] = Replicas(desired=1, ready=1)
    await s.scaler.tick()  # the first pass looks at every model
    await s.scaler.tick()
    s.scaler.wake("m")
    await s.scaler.tick()
    s.scaler.wake("")  # signals may have been lost: everyone
    await s.scaler.tick()
    assert s.demand.asked == [["m", "warm", "floor"], ["warm"], ["m", "warm"], ["m", "warm", "floor"]]


async def test_a_model_with_demand_is_looked_at_until_it_has_none() -> None:
    s = Setup()
    await s.scaler.tick()
    s.demand.scripted["m"] = Load(queued=1, in_flight=0, idle_for_s=0.0)
    s.backend.broken = True  # its scale-up fails: the next pass must try again, without a new signal
    s.scaler.wake("m")
    await s.scaler.tick()
    s.backend.broken = False
    await s.scaler.tick()
    assert s.backend.replicas("m").desired == 1
    assert s.demand.asked[1:] == [["m"], ["m"]]


async def test_tick_does_not_scale_down_when_another_gateway_leads() -> None:
    s = Setup(may_scale_down=False)
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=1)
    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=3600.0)
    await s.scaler.tick()
    assert (s.backend.calls, s.fence.holds) == ([], [])


async def test_tick_scales_down_only_through_the_fence() -> None:
    s = Setup()
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=1)
    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=3600.0)
    s.fence.refuse = True  # a request arrived since the load was read
    await s.scaler.tick()
    assert s.fence.holds == [(["m"], 60.0)]
    assert s.backend.calls == []


async def test_a_starting_replica_gets_its_cold_start_timeout_before_it_is_scaled_away() -> None:
    s = Setup()
    s.backend.replicas_of["m"] = Replicas(desired=1, ready=0)
    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=299.0)  # past idle_timeout, not cold_start_timeout
    await s.scaler.tick()
    assert (s.backend.calls, s.fence.holds) == ([], [])

    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=300.0)
    await s.scaler.tick()
    assert s.fence.holds == [(["m"], 300.0)]
    assert s.backend.calls == [("down", "m", 0, False)]


# Scaling units: several models sharing one set of replicas


def _unit() -> Setup:
    a = ModelSettings(name="a", max_replicas=3, idle_timeout_s=60, target_queue_per_replica=10)
    s = Setup(a, ModelSettings(name="b"))
    s.catalog.replace([a, ModelSettings(name="b")], units={"a": "d", "b": "d"})
    return s


async def test_a_units_demand_adds_up_over_its_models() -> None:
    s = _unit()
    s.backend.replicas_of["a"] = Replicas(desired=1, ready=1)
    s.demand.scripted["a"] = Load(queued=6, in_flight=0, idle_for_s=0.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=6, idle_for_s=0.0)  # 12 in all: 2 replicas, though 6 needs 1
    await s.scaler.tick()
    assert s.backend.calls == [("up", "a", 2, False)]


async def test_a_unit_scales_down_only_when_all_its_models_are_idle() -> None:
    s = _unit()
    s.backend.replicas_of["a"] = Replicas(desired=1, ready=1)
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=3600.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=10.0)
    await s.scaler.tick()
    assert (s.backend.calls, s.fence.holds) == ([], [])

    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=60.0)
    await s.scaler.tick()
    assert s.fence.holds == [(["a", "b"], 60.0)]  # the whole unit is fenced
    assert s.backend.calls == [("down", "a", 0, False)]


async def test_a_busy_model_keeps_its_unit_up() -> None:
    s = _unit()
    s.backend.replicas_of["a"] = Replicas(desired=1, ready=1)
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=3600.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=1, idle_for_s=3600.0)
    await s.scaler.tick()
    assert (s.backend.calls, s.fence.holds) == ([], [])


# Cold-start metrics and failures


async def test_cold_start_duration_is_observed_when_the_first_replica_is_ready() -> None:
    s = Setup()
    await s.scaler.ensure_capacity("m")
    s.clock.now += 12.5
    s.endpoints.set("other", ["http://10.0.0.9:8000"])  # another model's replicas say nothing about this one
    assert s.metric("kaltstart_cold_start_duration_seconds_count", model="m") == 0

    s.endpoints.set("m", ["http://10.0.0.1:8000"])
    s.clock.now += 5
    s.endpoints.set("m", ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])  # a second replica is no cold start
    assert s.metric("kaltstart_cold_start_duration_seconds_count", model="m") == 1
    assert s.metric("kaltstart_cold_start_duration_seconds_sum", model="m") == 12.5


async def test_each_scale_up_from_zero_is_its_own_cold_start() -> None:
    s = Setup()
    await s.scaler.ensure_capacity("m")  # the replica never gets ready...
    s.clock.now += 300
    s.demand.scripted["m"] = Load(queued=0, in_flight=0, idle_for_s=300.0)
    await s.scaler.tick()  # ...and is scaled away once its cold-start budget is spent
    assert s.backend.replicas("m").desired == 0

    s.clock.now += 3600
    await s.scaler.ensure_capacity("m")  # an hour later, a new request
    s.clock.now += 10
    s.endpoints.set("m", ["http://10.0.0.1:8000"])
    assert s.cold_starts() == 2
    assert s.metric("kaltstart_cold_start_duration_seconds_sum", model="m") == 10


async def test_an_unknown_model_does_not_stop_the_tick(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup(ModelSettings(name="gone"), M)  # "gone" left the backend; this catalog has not caught up yet
    s.backend.unknown.add("gone")
    s.demand.scripted["gone"] = Load(queued=1, in_flight=0, idle_for_s=0.0)
    s.demand.scripted["m"] = Load(queued=1, in_flight=0, idle_for_s=0.0)
    await s.scaler.tick()
    assert s.backend.calls == [("up", "gone", 1, False), ("up", "m", 1, False)]
    assert s.backend.replicas("m").desired == 1
    assert any(r.levelno == logging.ERROR and "gone" in r.getMessage() for r in caplog.records)


async def test_an_unknown_model_on_the_request_path_is_logged_not_raised() -> None:
    s = Setup()
    s.backend.unknown.add("m")
    await s.scaler.ensure_capacity("m")
    assert s.backend.calls == [("up", "m", 1, False)]


async def test_a_model_new_to_the_catalog_is_looked_at_once() -> None:
    s = Setup()
    await s.scaler.tick()
    s.catalog.replace([M, dataclasses.replace(M, name="new")])
    await s.scaler.tick()
    await s.scaler.tick()
    assert s.demand.asked[1:] == [["new"], []]


# Pools: the three-state keep-alive of their models


class RecordingKeeper(PoolKeeper):
    """A ``PoolKeeper`` whose moves are recorded, not sent; model "a" is active on one ready replica."""

    def __init__(self, endpoints: ReadyEndpoints, clock: Clock) -> None:
        super().__init__(endpoints=endpoints, client=None, clock=clock)  # type: ignore[arg-type]
        self.clock = clock
        self.sent: list[PoolMove] = []

    def _start(self, move: PoolMove) -> None:
        self.sent.append(move)


def _pool(may_scale_down: bool = True) -> tuple[Setup, RecordingKeeper]:
    a = ModelSettings(name="a", min_replicas=1, park_after_s=10, idle_timeout_s=60)
    made: list[RecordingKeeper] = []

    def keeper_of(endpoints: ReadyEndpoints) -> RecordingKeeper:
        made.append(RecordingKeeper(endpoints, Clock()))
        return made[0]

    s = Setup(a, ModelSettings(name="b"), may_scale_down=may_scale_down, pools=keeper_of)
    s.catalog.replace([a, ModelSettings(name="b")], units={"a": "p", "b": "p"}, pooled=["a", "b"])
    s.endpoints.set("a", ["http://r"])
    s.endpoints.residency.learn("a", "http://r", wire.Residency(active=("a",)))
    s.backend.replicas_of["a"] = Replicas(desired=1, ready=1)  # at rest: its floor, none starting
    return s, made[0]


async def test_a_pool_kept_at_its_floor_is_read_again_when_a_model_is_due_to_park() -> None:
    s, keeper = _pool()
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=4.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=None)
    await s.scaler.tick()  # the first pass reads every unit: a parks in 6 s
    assert keeper.sent == []
    await s.scaler.tick()
    assert s.demand.asked[-1] == [], "a unit at rest with nothing due was read"
    keeper.clock.now += 6
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=10.0)
    await s.scaler.tick()
    assert s.demand.asked[-1] == ["a", "b"]
    assert keeper.sent == [PoolMove("http://r", "a", "parked")]
    assert s.backend.calls == []  # the replica stays: min-replicas


async def test_only_the_scaling_leader_moves_pool_models() -> None:
    s, keeper = _pool(may_scale_down=False)
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=600.0)
    await s.scaler.tick()
    assert keeper.sent == []


def _idle_pool(a: ModelSettings, b: ModelSettings) -> Setup:
    """A pool of ``a`` and ``b`` (floor 0) with one ready replica, both models idle."""
    s = Setup(a, b, pools=lambda endpoints: RecordingKeeper(endpoints, Clock()))
    s.catalog.replace([a, b], units={"a": "p", "b": "p"}, pooled=["a", "b"])
    s.backend.replicas_of["a"] = Replicas(desired=1, ready=1)
    return s


async def test_a_pool_goes_to_zero_once_each_model_was_idle_for_its_own_idle_timeout() -> None:
    s = _idle_pool(ModelSettings(name="a", idle_timeout_s=60), ModelSettings(name="b", idle_timeout_s=600))
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=700.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=300.0)
    await s.scaler.tick()
    assert s.backend.calls == [], "b is still held (idle 300 s of its 600 s)"
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=600.0)
    await s.scaler.tick()
    assert s.backend.calls == [("down", "a", 0, False)]
    assert s.fence.holds == [(["a", "b"], 60.0)]  # every model idle for at least the shortest threshold


async def test_a_pool_model_with_a_short_idle_timeout_does_not_hold_the_pool_for_the_first_model_s() -> None:
    s = _idle_pool(ModelSettings(name="a", idle_timeout_s=600), ModelSettings(name="b", idle_timeout_s=60))
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=3600.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=120.0)
    await s.scaler.tick()
    assert s.backend.calls == [("down", "a", 0, False)]


async def test_models_sharing_a_replica_outside_a_pool_keep_the_first_model_s_idle_timeout() -> None:
    s = _idle_pool(ModelSettings(name="a", idle_timeout_s=60), ModelSettings(name="b", idle_timeout_s=600))
    s.catalog.replace(s.catalog.all(), units={"a": "p", "b": "p"})  # one model under two names: not a pool
    s.demand.scripted["a"] = Load(queued=0, in_flight=0, idle_for_s=100.0)
    s.demand.scripted["b"] = Load(queued=0, in_flight=0, idle_for_s=100.0)
    await s.scaler.tick()
    assert s.backend.calls == [("down", "a", 0, False)]
