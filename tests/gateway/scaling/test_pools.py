"""The three-state keep-alive on live pool replicas: which moves are due at each pass (hand-computed), and how
``PoolKeeper`` sends them to fake runtimes (``httpx.MockTransport``) and learns where the models are from the
answers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import wire
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.replicas.poolreports import PoolReports
from gateway.scaling.keepalive import MIN_GAPS
from gateway.scaling.parking import State
from gateway.scaling.pools import PoolKeeper, PoolMove, moves_due, next_due_s, plan_of
from gateway.settings import ModelSettings
from tests.harness import sample

pytestmark = pytest.mark.unit

A = ModelSettings(name="a", park_after_s=10, idle_timeout_s=60)
B = ModelSettings(name="b", park_after_s=10, idle_timeout_s=60)
U1, U2 = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def idle(seconds: float | None) -> Load:
    return Load(queued=0, in_flight=0, idle_for_s=seconds)


def test_an_idle_model_is_parked_after_park_after_and_unloaded_after_idle_timeout() -> None:
    holding: dict[str, State] = {U1: "active", U2: "parked"}
    assert moves_due(A, idle(9.9), holding) == []
    assert moves_due(A, idle(10), holding) == [PoolMove(U1, "a", "parked")]  # u2 has it parked already
    assert moves_due(A, idle(59), holding) == [PoolMove(U1, "a", "parked")]
    assert moves_due(A, idle(60), holding) == [PoolMove(U1, "a", "absent"), PoolMove(U2, "a", "absent")]
    assert moves_due(A, idle(600), {U1: "absent"}) == []


def test_a_model_with_demand_or_never_used_is_left_where_it_is() -> None:
    holding: dict[str, State] = {U1: "active", U2: "parked"}
    assert moves_due(A, Load(queued=1, in_flight=0, idle_for_s=600), holding) == []
    assert moves_due(A, Load(queued=0, in_flight=1, idle_for_s=600), holding) == []
    assert moves_due(A, idle(None), holding) == []
    assert next_due_s(A, Load(queued=1, in_flight=0, idle_for_s=600), holding) is None


def test_the_next_change_is_when_the_nearest_threshold_is_reached() -> None:
    assert next_due_s(A, idle(4), {U1: "active", U2: "parked"}) == 6  # u1's park at 10 s
    assert next_due_s(A, idle(25), {U2: "parked"}) == 35  # u2's unload at 60 s
    assert next_due_s(A, idle(70), {U1: "active"}) == 0  # overdue: due now
    assert next_due_s(A, idle(4), {}) is None  # held nowhere: nothing ahead


def test_a_park_after_at_or_above_the_idle_timeout_never_parks() -> None:
    never = ModelSettings(name="a", park_after_s=120, idle_timeout_s=60)
    assert (plan_of(never).park_after_s, plan_of(never).idle_timeout_s) == (60, 60)
    assert moves_due(never, idle(59), {U1: "active"}) == []
    assert moves_due(never, idle(60), {U1: "active"}) == [PoolMove(U1, "a", "absent")]
    assert plan_of(ModelSettings(name="d")).park_after_s == 60  # the default: a fifth of the default idle-timeout


class FakeRuntimes:
    """Pool runtimes behind ``httpx.MockTransport``: records each move asked for, answers with ``status`` (a 200
    carries the residency after the move, as a pool runtime's does)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []
        self.reads = 0
        self.status = 200
        self.held: dict[str, dict[str, wire.ModelState]] = {U1: {"a": "active", "b": "active"}, U2: {"a": "parked"}}
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        if request.url.path == wire.READY_PATH:
            self.reads += 1
            return httpx.Response(200, content=self.ready(url).model_dump_json())
        model = json.loads(request.content)["model"]
        self.asked.append((url, request.url.path, model))
        await self.release.wait()
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "busy"})
        to: wire.ModelState = "parked" if request.url.path == wire.POOL_PARK_PATH else "absent"
        self.held[url][model] = to
        return httpx.Response(200, json={"model": model, "state": to}, headers=self.residency(url).headers())

    def ready(self, url: str) -> wire.ReadyBody:
        models = {n: wire.PoolModel(state=s, weight_bytes=1) for n, s in self.held[url].items()}
        report = wire.PoolReport(
            device_bytes=1, device_budget_bytes=9, host_bytes=0, host_budget_bytes=9, models=models
        )
        return wire.ReadyBody(model="a", max_batch_size=4, context_length=64, pool=report)

    def residency(self, url: str) -> wire.Residency:
        names = self.held[url].items()
        return wire.Residency(
            active=tuple(n for n, s in names if s == "active"), parked=tuple(n for n, s in names if s == "parked")
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtimes() -> FakeRuntimes:
    return FakeRuntimes()


@pytest.fixture
def endpoints(runtimes: FakeRuntimes) -> ReadyEndpoints:
    endpoints = ReadyEndpoints()
    for model in ("a", "b"):
        endpoints.set(model, [U1, U2])
    for url in (U1, U2):
        endpoints.residency.learn("a", url, runtimes.residency(url))
    return endpoints


def keeper(runtimes: FakeRuntimes, endpoints: ReadyEndpoints, clock: Clock | None = None) -> PoolKeeper:
    client = HttpxRuntimeClient(httpx.AsyncClient(transport=httpx.MockTransport(runtimes.handle)))
    return PoolKeeper(endpoints=endpoints, client=client, clock=clock or Clock())


async def settle(k: PoolKeeper) -> None:
    """Wait for the moves under way (the keeper's own tasks)."""
    await asyncio.gather(*k._moving.values())


async def test_the_moves_due_are_sent_and_their_answers_update_the_view(
    runtimes: FakeRuntimes, endpoints: ReadyEndpoints
) -> None:
    k = keeper(runtimes, endpoints)
    assert k.holding("a") == {U1: "active", U2: "parked"}
    k.apply([A, B], [idle(5), idle(30)])  # a: not yet; b: parked on u1 (u2 holds none of it)
    await settle(k)
    assert runtimes.asked == [(U1, wire.POOL_PARK_PATH, "b")]
    assert k.holding("b") == {U1: "parked"}  # learned from the answer's headers

    runtimes.asked.clear()
    k.apply([A, B], [idle(60), idle(31)])  # a: unloaded on both; b: nothing new
    await settle(k)
    assert sorted(runtimes.asked) == [(U1, wire.POOL_UNLOAD_PATH, "a"), (U2, wire.POOL_UNLOAD_PATH, "a")]
    assert k.holding("a") == {}
    runtimes.asked.clear()
    k.apply([A, B], [idle(61), idle(32)])
    await settle(k)
    assert runtimes.asked == []  # nothing is sent for a model with no change due
    await k.close()


async def test_a_busy_model_is_asked_again_at_a_later_pass(runtimes: FakeRuntimes, endpoints: ReadyEndpoints) -> None:
    k = keeper(runtimes, endpoints)
    runtimes.status = 409
    k.apply([B], [idle(30)])
    await settle(k)
    assert k.holding("b") == {U1: "active"}  # still where it was
    runtimes.status = 200
    k.apply([B], [idle(31)])
    await settle(k)
    assert runtimes.asked == [(U1, wire.POOL_PARK_PATH, "b")] * 2
    assert k.holding("b") == {U1: "parked"}
    await k.close()


async def test_one_move_at_a_time_per_replica_and_model(runtimes: FakeRuntimes, endpoints: ReadyEndpoints) -> None:
    k = keeper(runtimes, endpoints)
    runtimes.release.clear()  # the first park is slow
    k.apply([B], [idle(30)])
    await asyncio.sleep(0)  # its task starts and waits on the runtime
    k.apply([B], [idle(31)])  # the next pass comes before the answer
    runtimes.release.set()
    await settle(k)
    assert runtimes.asked == [(U1, wire.POOL_PARK_PATH, "b")]
    await k.close()


async def test_a_unit_not_read_is_due_when_its_next_change_comes(
    runtimes: FakeRuntimes, endpoints: ReadyEndpoints
) -> None:
    clock = Clock()
    k = keeper(runtimes, endpoints, clock)
    k.apply([A, B], [idle(4), idle(4)])  # the nearest: a and b park at 10 s idle, 6 s from now
    assert not k.due([A, B])
    clock.now += 5.9
    assert not k.due([A, B])
    clock.now += 0.1
    assert k.due([A, B]) and k.due([B])
    k.apply([A, B], [idle(None), idle(None)])  # used again: nothing ahead
    assert not k.due([A, B])
    await k.close()


def busy() -> Load:
    return Load(queued=1, in_flight=0, idle_for_s=0.0)


async def test_an_adaptive_model_parks_after_what_it_learned_from_its_gaps(
    runtimes: FakeRuntimes, endpoints: ReadyEndpoints
) -> None:
    """Gaps of 30 s, one request at each end: the fixed pair (park after 60 s) keeps the model on the device all
    along; parking it soon after it goes idle costs a wake (1 s + 15 s per waiting request) but saves most of the
    device-seconds, so that is what is learned, and the model is then parked well before 60 s."""
    clock, metrics = Clock(), Metrics()
    client = HttpxRuntimeClient(httpx.AsyncClient(transport=httpx.MockTransport(runtimes.handle)))
    k = PoolKeeper(endpoints=endpoints, client=client, metrics=metrics, clock=clock)
    b = ModelSettings(name="b", park_after_s=60, idle_timeout_s=600, idle_policy="adaptive")
    assert not k.plan(b).learned
    for _ in range(MIN_GAPS + 1):
        k.apply([b], [idle(0.0)])  # idle from now
        clock.now += 30
        k.apply([b], [busy()])  # a 30 s gap ends
        clock.now += 1
    plan = k.plan(b)
    assert plan.learned and plan.park_after_s < 30, plan
    assert sample(metrics.registry, "kaltstart_keep_alive_seconds", model="b", window="park_after") == plan.park_after_s
    assert sample(metrics.registry, "kaltstart_keep_alive_learned", model="b") == 1
    k.apply([b], [idle(plan.park_after_s)])
    await settle(k)
    assert runtimes.asked == [(U1, wire.POOL_PARK_PATH, "b")]
    fixed = ModelSettings(name="b", park_after_s=60, idle_timeout_s=600)
    assert moves_due(fixed, idle(plan.park_after_s), {U1: "active"}) == [], "the fixed pair would not park it yet"
    await k.close()


async def test_a_model_another_gateway_woke_is_found_and_parked(runtimes: FakeRuntimes) -> None:
    """This gateway last heard that u1 holds b nowhere (absent); another gateway's batch made it active there. Once
    its park is due, u1's report is read again and b is parked."""
    endpoints = ReadyEndpoints()
    endpoints.set("b", [U1])
    endpoints.residency.learn("b", U1, wire.Residency(active=("a",)))
    client = HttpxRuntimeClient(httpx.AsyncClient(transport=httpx.MockTransport(runtimes.handle)))
    reports = PoolReports(client, endpoints.residency)
    clock = Clock()
    k = PoolKeeper(endpoints=endpoints, client=client, reports=reports, clock=clock)
    k.apply([B], [idle(5)])
    assert k.holding("b") == {} and k.due([B]) is False
    clock.now += 5
    assert k.due([B]), "its park is due: a look is wanted though it is held nowhere that this gateway knows"
    k.apply([B], [idle(10)])
    await reports.drain()
    assert k.holding("b") == {U1: "active"}  # the report read again
    k.apply([B], [idle(11)])
    await settle(k)
    assert runtimes.asked == [(U1, wire.POOL_PARK_PATH, "b")]
    await reports.drain()  # the park's answer says u1's models moved: its report is read for the metrics
    reads = runtimes.reads
    k.apply([B], [idle(12)])  # b is parked, so active nowhere again: but it was looked for in this idle period
    await reports.drain()
    assert runtimes.reads == reads, "read once per idle period"
    await k.close()
