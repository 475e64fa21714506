"""Replica announcements are vouched, not trusted: bounded before they are read, kept only for the models whose
backend vouches for the address, and a ready or stopping announcement counts only once the replica's own
``/readyz`` agrees (the runtime here is an ``httpx.MockTransport``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

import wire
from gateway.metrics import Metrics
from gateway.replicas.announcements import Announcements
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.replicas.readychecks import ReadyChecks
from tests.gateway.replicas.test_endpoints import Clock
from tests.gateway.scaling.test_autoscaler import MemoryDurations
from tests.harness import sample

pytestmark = [pytest.mark.unit, pytest.mark.security]

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
REAL = wire.ReadyBody(model="m", max_batch_size=4, context_length=4096, scheduler="continuous")


@dataclass
class Replicas:
    """What each replica's ``/readyz`` answers (None: the connection is refused), and how often it was asked."""

    ready: dict[str, wire.ReadyBody | None] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "GET" and request.url.path == wire.READY_PATH
        url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.asked.append(url)
        report = self.ready.get(url)
        if url not in self.ready:
            raise httpx.ConnectError("connection refused")
        if report is None:
            return httpx.Response(503, json={"error": "starting: load"})
        return httpx.Response(200, content=report.model_dump_json())


@dataclass
class Rig:
    endpoints: ReadyEndpoints
    clock: Clock
    metrics: Metrics
    cold: ColdStarts
    replicas: Replicas
    announcements: Announcements

    async def hear(self, *messages: wire.Announcement | str) -> None:
        """Messages of the replicas channel, then every check they started is done."""
        for message in messages:
            self.announcements.received(message if isinstance(message, str) else message.model_dump_json())
        await self.announcements.drain()

    def counted(self, outcome: str) -> float:
        return sample(self.metrics.registry, "kaltstart_replica_announcements_total", outcome=outcome)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock, metrics, replicas = Clock(), Metrics(), Replicas()
    endpoints = ReadyEndpoints(clock)
    endpoints.vouch("m", [A, B])  # both started by the backend, neither ready as far as it knows
    cold = ColdStarts(durations=MemoryDurations(), endpoints=endpoints, metrics=metrics, clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(replicas.handle)) as client:
        checks = ReadyChecks(HttpxRuntimeClient(client), clock=clock)
        yield Rig(
            endpoints,
            clock,
            metrics,
            cold,
            replicas,
            Announcements(endpoints=endpoints, cold_starts=cold, metrics=metrics, checks=checks, clock=clock),
        )


def ready(url: str, report: wire.ReadyBody, *, models: tuple[str, ...] = ("m",), interval_s: float = 2.0) -> str:
    """A ready announcement as JSON, written by hand: a forger is not held to the model's limits."""
    fields = {"url": url, "models": models, "state": "ready", "elapsed_s": 1.0, "interval_s": interval_s}
    return json.dumps(fields | {"ready": report.model_dump(mode="json")})


def said(url: str, state: wire.ReplicaState, *models: str, phase: wire.StartupPhase | None = None) -> wire.Announcement:
    return wire.Announcement(url=url, models=models, state=state, phase=phase, elapsed_s=1.0, interval_s=2.0)


async def test_a_ready_announcement_counts_with_the_report_the_replica_gives_not_the_announced_one(rig: Rig) -> None:
    rig.replicas.ready[A] = REAL
    await rig.hear(ready(A, REAL.model_copy(update={"context_length": 1})))
    assert rig.endpoints.get("m") == (A,)
    report = rig.endpoints.report("m", A)
    assert report is not None and report.context_length == 4096  # from /readyz, not the announced 1


async def test_a_fake_ready_announcement_of_a_replica_still_loading_changes_nothing(rig: Rig) -> None:
    rig.replicas.ready[A] = None  # /readyz: 503, still loading
    await rig.hear(ready(A, REAL))
    assert rig.endpoints.get("m") == ()
    assert rig.endpoints.report("m", A) is None
    assert rig.counted("unconfirmed") == 1


async def test_a_ready_announcement_whose_replica_serves_another_model_changes_nothing(rig: Rig) -> None:
    rig.replicas.ready[A] = REAL.model_copy(update={"model": "other"})
    await rig.hear(ready(A, REAL))
    assert rig.endpoints.get("m") == ()
    assert rig.counted("unconfirmed") == 1


async def test_a_replica_serving_several_names_is_confirmed_for_each(rig: Rig) -> None:
    rig.endpoints.vouch("alias", [A])
    rig.replicas.ready[A] = REAL.model_copy(update={"models": ("m", "alias")})
    await rig.hear(ready(A, REAL, models=("m", "alias")))
    assert rig.endpoints.get("m") == (A,) and rig.endpoints.get("alias") == (A,)


async def test_a_fake_stopping_announcement_of_a_serving_replica_changes_nothing(rig: Rig) -> None:
    rig.endpoints.set("m", [A, B])
    rig.replicas.ready[A] = REAL
    await rig.hear(said(A, "stopping", "m"))
    assert rig.endpoints.get("m") == (A, B)
    assert rig.counted("unconfirmed") == 1


async def test_a_replica_that_really_stops_gets_no_more_work_at_once(rig: Rig) -> None:
    rig.endpoints.set("m", [A, B])  # the backend still lists A
    await rig.hear(said(A, "stopping", "m"))  # and A refuses connections: it has stopped listening
    assert rig.endpoints.get("m") == (B,)


async def test_a_flood_of_announcements_about_one_replica_costs_it_one_check_per_second(rig: Rig) -> None:
    rig.replicas.ready[A] = None
    await rig.hear(*[ready(A, REAL)] * 100, *[said(A, "stopping", "m")] * 100)
    assert rig.replicas.asked == [A, A]  # one check for ready, one for stopping
    rig.replicas.ready[A] = REAL
    rig.clock.now += 1.0
    await rig.hear(*[ready(A, REAL)] * 100)
    assert rig.endpoints.get("m") == (A,)
    await rig.hear(*[ready(A, REAL)] * 100)  # renewals of a confirmed replica: no check
    assert rig.replicas.asked == [A, A, A]


async def test_an_announcement_too_long_to_read_is_dropped_unread(rig: Rig) -> None:
    """The review's case: 1.2 MB, 100,001 model names, one of them vouched for."""
    names = ("m", *(f"model-{i}" for i in range(100_000)))
    huge = said(A, "starting", "m", phase="load").model_copy(update={"models": names}).model_dump_json()
    assert len(huge) > 1_000_000
    await rig.hear(huge)
    assert rig.counted("oversized") == 1 and rig.counted("accepted") == 0
    assert "loading" not in rig.cold.progress("m", 0.0)


@pytest.mark.parametrize(
    "field_, value",
    [
        ("models", ["m", *(f"model-{i}" for i in range(wire.MAX_ANNOUNCED_MODELS))]),
        ("models", ["m", "x" * (wire.MAX_MODEL_NAME_LENGTH + 1)]),
        ("interval_s", 1e9),  # an entry that would never lapse
        ("interval_s", float("inf")),
        ("url", "http://user:secret@10.0.0.1:8000"),
        ("url", "file:///etc/passwd"),
    ],
)
async def test_an_announcement_beyond_any_bound_is_dropped(rig: Rig, field_: str, value: object) -> None:
    rig.replicas.ready[A] = REAL
    fields = said(A, "starting", "m", phase="load").model_dump(mode="json") | {field_: value}
    await rig.hear(json.dumps(fields))
    assert rig.counted("malformed") == 1 and rig.counted("accepted") == 0
    assert "loading" not in rig.cold.progress("m", 0.0)


async def test_a_ready_announcement_with_a_huge_interval_is_dropped_and_a_taken_one_lapses(rig: Rig) -> None:
    rig.replicas.ready[A] = REAL
    await rig.hear(ready(A, REAL, interval_s=1e9))
    assert rig.endpoints.get("m") == ()
    await rig.hear(ready(A, REAL, interval_s=wire.MAX_ANNOUNCE_INTERVAL_S))
    rig.clock.now += 3 * wire.MAX_ANNOUNCE_INTERVAL_S
    rig.endpoints.expire()
    assert rig.endpoints.get("m") == ()


async def test_phases_are_kept_only_for_the_models_vouched_for(rig: Rig) -> None:
    await rig.hear(said(A, "starting", "m", "someone-elses-model", phase="load"))
    assert "loading" in rig.cold.progress("m", 0.0)
    assert "loading" not in rig.cold.progress("someone-elses-model", 0.0)
