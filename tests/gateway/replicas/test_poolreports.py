"""Pool reports are read again when a batch answer says a pool replica's models moved, and only then."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import wire
from gateway.replicas.client import BatchAnswer
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from gateway.replicas.poolreports import PoolReports

pytestmark = pytest.mark.unit

URL = "http://10.0.0.1:8000"


def ready_body(active: str, parked: str, wakes: int) -> bytes:
    models = {
        active: wire.PoolModel(state="active", weight_bytes=10, wakes=wakes),
        parked: wire.PoolModel(state="parked", weight_bytes=10),
    }
    pool = wire.PoolReport(device_bytes=10, device_budget_bytes=10, host_bytes=10, host_budget_bytes=10, models=models)
    return (
        wire.ReadyBody(model="a", max_batch_size=1, context_length=8, models=("a", "b"), pool=pool)
        .model_dump_json()
        .encode()
    )


class Replica:
    """A pool replica's ``/readyz``, answered when the test lets it (``answer``)."""

    def __init__(self) -> None:
        self.body = ready_body("a", "b", wakes=0)
        self.reads = 0
        self.go = asyncio.Event()
        self.go.set()
        self.asked = asyncio.Event()

    async def get(self, url: str) -> bytes:
        assert url == URL + wire.READY_PATH
        self.reads += 1
        self.asked.set()
        await self.go.wait()
        return self.body

    async def post(self, url: str, body: str) -> None:
        raise AssertionError

    def stream(self, url: str, body: str) -> contextlib.AbstractAsyncContextManager[BatchAnswer]:
        raise AssertionError

    async def aclose(self) -> None:
        pass


def moves(endpoints: ReadyEndpoints) -> int:
    (_url, _residency, report), *_ = endpoints.residency.replicas()
    assert report is not None
    return sum(m.wakes for m in report.models.values())


async def test_a_report_is_read_when_the_models_moved_and_not_otherwise() -> None:
    endpoints, replica = ReadyEndpoints(), Replica()
    reports = PoolReports(replica, endpoints.residency)
    endpoints.set("b", [URL])
    pool = EndpointPool("b", endpoints, budget=1)

    pool.learn(URL, wire.Residency(active=("a",), parked=("b",)))  # first heard of: its report is read
    await reports.drain()
    assert replica.reads == 1
    pool.learn(URL, wire.Residency(active=("a",), parked=("b",)))  # no news: nothing read
    await reports.drain()
    assert replica.reads == 1

    replica.body = ready_body("b", "a", wakes=1)
    pool.learn(URL, wire.Residency(active=("b",), parked=("a",)))
    await reports.drain()
    assert (replica.reads, moves(endpoints)) == (2, 1)


async def test_moves_reported_while_a_read_is_under_way_cost_one_read_after_it() -> None:
    endpoints, replica = ReadyEndpoints(), Replica()
    reports = PoolReports(replica, endpoints.residency)
    endpoints.set("b", [URL])
    pool = EndpointPool("b", endpoints, budget=1)
    replica.go.clear()
    pool.learn(URL, wire.Residency(active=("a",), parked=("b",)))
    await replica.asked.wait()
    for wakes in range(1, 4):  # three batch answers with news while the first read waits
        active, parked = ("b", "a") if wakes % 2 else ("a", "b")
        pool.learn(URL, wire.Residency(active=(active,), parked=(parked,)))
        replica.body = ready_body(active, parked, wakes=wakes)
    replica.go.set()
    await reports.drain()
    assert (replica.reads, moves(endpoints)) == (2, 3)
    await reports.stop()
