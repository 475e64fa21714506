"""The three-state keep-alive on live pool replicas: which moves are due at each pass (hand-computed), and how
``PoolKeeper`` sends them to fake runtimes (``httpx.MockTransport``) and learns where the models are from the
answers."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import wire
from gateway.queue.stream import Load
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.parking import State
from gateway.scaling.pools import PoolKeeper, PoolMove, moves_due, next_due_s, plan_of
from gateway.settings import ModelSettings

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
        self.status = 200
        self.held: dict[str, dict[str, wire.ModelState]] = {U1: {"a": "active", "b": "active"}, U2: {"a": "parked"}}
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        url, model = f"{request.url.scheme}://{request.url.netloc.decode()}", json.loads(request.content)["model"]
        self.asked.append((url, request.url.path, model))
        await self.release.wait()
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "busy"})
        to: wire.ModelState = "parked" if request.url.path == wire.POOL_PARK_PATH else "absent"
        self.held[url][model] = to
        return httpx.Response(200, json={"model": model, "state": to}, headers=self.residency(url).headers())

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
