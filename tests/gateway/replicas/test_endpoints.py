"""Ready endpoints from two sources: the backend's view, and the replicas' own announcements, which count only for
URLs the backend vouches for, lapse unless renewed, and end with a replica's stop."""

from __future__ import annotations

import asyncio

import pytest

import wire
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints

pytestmark = pytest.mark.unit  # the pool's tests use an event loop, but no I/O

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
REPORT = wire.ReadyBody(model="m", max_batch_size=4, context_length=128, scheduler="continuous")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def endpoints() -> tuple[ReadyEndpoints, Clock, list[str]]:
    clock, changes = Clock(), list[str]()
    e = ReadyEndpoints(clock)
    e.subscribe(changes.append)
    return e, clock, changes


def test_an_announcement_from_a_url_the_backend_does_not_vouch_for_is_refused() -> None:
    e, _, changes = endpoints()
    assert not e.announce("m", A, "ready", REPORT, ttl_s=6)
    e.vouch("m", [B])
    assert not e.announce("m", A, "ready", REPORT, ttl_s=6)
    e.vouch("other", [A])  # vouched for another model only
    assert not e.announce("m", A, "ready", REPORT, ttl_s=6)
    assert (e.get("m"), changes) == ((), [])


def test_a_vouched_ready_announcement_makes_the_replica_ready_before_the_backend_says_so() -> None:
    e, _, changes = endpoints()
    e.vouch("m", [A])  # started, not ready as far as the backend knows
    assert e.get("m") == ()
    assert e.announce("m", A, "ready", REPORT, ttl_s=6)
    assert (e.get("m"), changes) == ((A,), ["m"])
    assert e.report("m", A) == REPORT
    assert e.ready_since(A) is not None
    e.set("m", [A])  # the probe catches up: no change for readers
    assert changes == ["m"]


def test_an_announcement_lapses_unless_renewed_but_the_backend_view_stays() -> None:
    e, clock, _ = endpoints()
    e.vouch("m", [A, B])
    e.announce("m", A, "ready", REPORT, ttl_s=6)
    e.announce("m", B, "ready", REPORT, ttl_s=6)
    e.set("m", [B])
    clock.now += 5
    e.announce("m", A, "ready", REPORT, ttl_s=6)  # renewed
    clock.now += 2
    e.expire()
    assert e.get("m") == (A, B)  # B's announcement lapsed, but its probe says ready
    clock.now += 5
    e.expire()
    assert e.get("m") == (B,)
    assert e.report("m", A) is None


def test_a_stopping_replica_gets_no_more_work_while_the_backend_still_lists_it() -> None:
    e, _, _ = endpoints()
    e.vouch("m", [A, B])
    e.set("m", [A, B])
    e.announce("m", A, "stopping", None, ttl_s=6)
    assert e.get("m") == (B,)
    e.set("m", [A, B])  # the backend has not noticed yet
    assert e.get("m") == (B,)
    e.set("m", [B])
    e.set("m", [A, B])  # the same address back later (a port reused): ready again
    assert e.get("m") == (A, B)


def test_a_replica_the_backend_stops_vouching_for_loses_its_announcement() -> None:
    e, _, _ = endpoints()
    e.vouch("m", [A])
    e.announce("m", A, "ready", REPORT, ttl_s=60)
    e.vouch("m", [])  # its process exited, or it left the EndpointSlices
    assert e.get("m") == ()
    assert not e.announce("m", A, "ready", REPORT, ttl_s=60)


async def test_a_suspended_replica_gets_no_work_until_the_ready_set_changes() -> None:
    e, _, _ = endpoints()
    e.set("m", [A, B])
    pool = EndpointPool("m", e, budget=4)
    pool.set_continuous(A, True)
    pool.set_continuous(B, True)
    pool.start(B, 1)  # B is busier: A is the one to pick
    assert (await pool.acquire())[0] == A
    pool.suspend(A)  # it refused a connection
    assert (await pool.acquire())[0] == B
    e.set("m", [A, B, "http://10.0.0.3:8000"])  # the backend's view changed: A gets another chance
    assert (await pool.acquire())[0] == A


async def test_a_retry_waits_for_a_replica_with_nothing_in_flight_and_has_it_alone() -> None:
    e, _, _ = endpoints()
    e.set("m", [A])
    pool = EndpointPool("m", e, budget=4)
    pool.set_continuous(A, True)
    pool.start(A, 2)
    alone = asyncio.create_task(pool.acquire_alone())
    await asyncio.sleep(0)
    assert not alone.done()
    pool.finish(A, 2)
    assert await alone == A
    pool.start(A, 1)
    assert pool.free(A) == 0  # nothing joins it
    pool.finish(A, 1)
    assert pool.free(A) == 4


def test_a_listener_to_one_model_hears_only_that_model() -> None:
    e, heard = ReadyEndpoints(), list[str]()
    unsubscribe = e.subscribe(heard.append, model="m")
    e.set("other", [A])
    e.set("m", [A])
    unsubscribe()
    e.set("m", [B])
    assert heard == ["m"]
