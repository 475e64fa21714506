"""Ready endpoints from two sources: the backend's view, and the replicas' own announcements, which count only for
URLs the backend vouches for, lapse unless renewed, and end with a replica's stop; and the endpoint pool that picks
the replica for each of a dispatcher's batches."""

from __future__ import annotations

import asyncio

import pytest

import wire
from gateway.replicas.adapters import MAX_LOADED_ADAPTERS, LoadedAdapters
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from tests.gateway.replicas.watched import WatchedEndpoints, looked_up

pytestmark = pytest.mark.unit  # the pool's tests use an event loop, but no I/O

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"
MODEL, R1, R2 = "m", A, B
R3 = "http://10.0.0.3:8000"
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
    e = WatchedEndpoints()
    e.set("m", [A])
    pool = EndpointPool("m", e, budget=4)
    pool.set_continuous(A, True)
    pool.start(A, 2)
    looked = e.next_lookup()
    alone = asyncio.create_task(pool.acquire_alone())
    await looked_up(looked)  # A has requests in flight: it waits
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


# The endpoint pool of a dispatcher


async def test_pool_waits_for_a_ready_replica() -> None:
    endpoints = WatchedEndpoints()
    pool = EndpointPool(MODEL, endpoints, budget=4)
    looked = endpoints.next_lookup()
    acquiring = asyncio.create_task(pool.acquire())
    await looked_up(looked)  # none ready: it waits
    endpoints.set("other-model", [R2])
    assert not acquiring.done()
    endpoints.set(MODEL, [R1])
    assert await asyncio.wait_for(acquiring, 5) == (R1, 4)
    assert pool.is_ready(R1) and not pool.is_ready(R2)
    pool.close()


async def test_a_static_replica_takes_one_batch_at_a_time() -> None:
    endpoints = WatchedEndpoints()
    endpoints.set(MODEL, [R1])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    assert await pool.acquire() == (R1, 8)
    pool.start(R1, 4)
    looked = endpoints.next_lookup()
    second = asyncio.create_task(pool.acquire())
    await looked_up(looked)
    assert not second.done()  # R1 is busy with a batch
    looked = endpoints.next_lookup()
    pool.finish(R1, 3)
    await looked_up(looked)  # woken, it looked again
    assert not second.done()  # ...and waits until all of it is done
    pool.finish(R1)
    assert await asyncio.wait_for(second, 5) == (R1, 8)
    pool.close()


async def test_a_continuous_replica_takes_requests_while_it_has_rows() -> None:
    endpoints = WatchedEndpoints()
    endpoints.set(MODEL, [R1])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    pool.set_continuous(R1, True)
    pool.start(R1, 6)
    assert await pool.acquire() == (R1, 2)  # busy, with room for two more
    pool.start(R1, 2)
    looked = endpoints.next_lookup()
    full = asyncio.create_task(pool.acquire())
    await looked_up(looked)
    assert not full.done()
    pool.finish(R1)  # one request of the running batch finished: its row is free at once
    assert await asyncio.wait_for(full, 5) == (R1, 1)
    pool.close()


async def test_pool_prefers_the_replica_with_most_room() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1, R2])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    pool.set_continuous(R1, True)
    pool.set_continuous(R2, True)
    pool.start(R1, 5)
    assert await pool.acquire() == (R2, 8)
    pool.start(R2, 7)
    assert await pool.acquire() == (R1, 3)  # 3 free beats 1
    endpoints.set(MODEL, [R2])  # R1 went away
    assert await pool.acquire() == (R2, 1)
    pool.close()


async def test_pool_never_gives_a_replica_that_left_the_ready_set() -> None:
    endpoints = WatchedEndpoints()
    endpoints.set(MODEL, [R1, R2])
    pool = EndpointPool(MODEL, endpoints, budget=1)
    pool.start(R1, 1)
    endpoints.set(MODEL, [R1])  # R2 is no longer ready, though it has room
    looked = endpoints.next_lookup()
    waiting = asyncio.create_task(pool.acquire())
    await looked_up(looked)
    assert not waiting.done()
    pool.finish(R1)
    assert await asyncio.wait_for(waiting, 5) == (R1, 1)
    pool.close()


async def test_pool_prefers_the_replica_where_the_model_is_active_then_parked_then_the_most_free_bytes() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1, R2, R3])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    for url in (R1, R2, R3):
        pool.set_continuous(url, True)
    pool.start(R1, 6)  # the most loaded: without a preference the least loaded would win
    pool.start(R2, 3)
    pool.learn(R1, wire.Residency(active=("other", MODEL), free_device_bytes=0))
    pool.learn(R2, wire.Residency(parked=(MODEL,), free_device_bytes=9))
    pool.learn(R3, wire.Residency(active=("other",), free_device_bytes=10))
    assert await pool.acquire() == (R1, 2)  # active beats parked beats absent, whatever the load
    pool.start(R1, 2)
    assert await pool.acquire() == (R2, 5)  # active but full: the parked one
    pool.learn(R2, wire.Residency(active=("other",), free_device_bytes=5))
    assert await pool.acquire() == (R3, 8)  # absent on both: the most free device bytes
    pool.learn(R2, wire.Residency(free_device_bytes=50))
    assert await pool.acquire() == (R2, 5)
    pool.close()


async def test_what_a_replica_held_is_forgotten_when_it_leaves_the_ready_set() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set(MODEL, [R1, R2])
    pool = EndpointPool(MODEL, endpoints, budget=8)
    pool.learn(R2, wire.Residency(active=(MODEL,)))
    assert await pool.acquire() == (R2, 8)
    endpoints.set(MODEL, [R1])
    endpoints.set(MODEL, [R1, R2])  # back, a new process perhaps: nothing known of it
    assert endpoints.residency.preference(R2, MODEL) == (0, 0)
    pool.learn("http://10.0.0.9:8000", wire.Residency(active=(MODEL,)))  # not a ready replica: not kept
    assert endpoints.residency.preference("http://10.0.0.9:8000", MODEL) == (0, 0)
    pool.close()


# LoRA adapters: served by their base's replicas


async def test_an_adapter_has_its_base_ready_set_and_hears_its_changes() -> None:
    e, heard = ReadyEndpoints(), list[str]()
    e.subscribe(heard.append, model="lora")
    e.set("base", [A])
    e.alias("lora", "base")
    assert e.get("lora") == (A,) and heard == ["lora"]
    pool = EndpointPool("lora", e, budget=4)
    looked = asyncio.create_task(pool.acquire())
    assert await asyncio.wait_for(looked, 5) == (A, 4)
    e.set("base", [B])  # the base's set changed: so did the adapter's, and its pool hears it
    assert e.get("lora") == (B,) and heard == ["lora", "lora"] and pool.is_ready(B) and not pool.is_ready(A)
    e.alias("lora", None)
    assert e.get("lora") == () and heard == ["lora", "lora", "lora"]
    e.set("base", [A])
    assert heard == ["lora", "lora", "lora"]
    pool.close()


async def test_an_adapter_pool_prefers_the_replica_that_holds_the_adapter_loaded() -> None:
    endpoints = ReadyEndpoints()
    endpoints.set("base", [R1, R2, R3])
    endpoints.alias("lora", "base")
    pool = EndpointPool("lora", endpoints, budget=8)
    for url in (R1, R2, R3):
        pool.set_continuous(url, True)
    pool.start(R2, 6)  # the most loaded: without a preference the least loaded would win
    pool.learn_adapters(R2, ["other", "lora"])
    pool.learn_adapters(R3, ["other"])
    assert await pool.acquire() == (R2, 2)
    pool.start(R2, 2)
    assert await pool.acquire() == (R1, 8)  # loaded but full: the least loaded of the others
    endpoints.set("base", [R1, R3])  # R2 left: what it held is forgotten
    endpoints.set("base", [R1, R2, R3])
    assert not endpoints.adapters.holds(R2, "lora")
    pool.learn_adapters("http://10.0.0.9:8000", ["lora"])  # not a ready replica: not kept
    assert not endpoints.adapters.holds("http://10.0.0.9:8000", "lora")
    pool.close()


def test_loaded_adapters_are_bounded_per_replica() -> None:
    loaded = LoadedAdapters()
    loaded.learn(A, [f"a{i}" for i in range(MAX_LOADED_ADAPTERS + 10)] + ["x" * 200])
    assert dict(loaded.counts()) == {A: MAX_LOADED_ADAPTERS}
    assert wire.adapters_from_header({}) is None  # a runtime that predates adapters says nothing
    assert wire.adapters_from_header({wire.ADAPTERS_HEADER: ""}) == ()
    assert wire.adapters_from_header({wire.ADAPTERS_HEADER: "a,b,"}) == ("a", "b")
