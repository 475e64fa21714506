"""What the gateway tells clients about a cold start: Retry-After from the measured duration, progress lines with
the replica's announced phase; and where cold starts go, by phase, in the metrics."""

from __future__ import annotations

import pytest

import wire
from gateway.metrics import Metrics
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.endpoints import ReadyEndpoints
from tests.gateway.replicas.test_endpoints import Clock
from tests.gateway.scaling.test_autoscaler import MemoryDurations

pytestmark = pytest.mark.unit

FALLBACK = 7


def cold_starts() -> tuple[ColdStarts, MemoryDurations, Clock, Metrics]:
    durations, clock, metrics = MemoryDurations(), Clock(), Metrics()
    return (
        ColdStarts(durations=durations, endpoints=ReadyEndpoints(), metrics=metrics, clock=clock),
        durations,
        clock,
        metrics,
    )


async def test_retry_after_is_the_fallback_until_a_cold_start_was_measured() -> None:
    cold, durations, clock, _ = cold_starts()
    cold.began("m")
    await cold.drain()
    assert cold.retry_after_s("m", FALLBACK) == FALLBACK
    clock.now += 20
    cold.ready("m")
    await cold.drain()
    assert durations.stored == {"m": 20}


async def test_retry_after_is_what_is_left_of_the_typical_cold_start() -> None:
    cold, durations, clock, _ = cold_starts()
    durations.stored["m"] = 30.0  # measured by some gateway replica before
    cold.began("m")
    await cold.drain()
    clock.now += 12
    assert cold.retry_after_s("m", FALLBACK) == 18
    clock.now += 30  # slower than usual: no better guess than the configured one
    assert cold.retry_after_s("m", FALLBACK) == FALLBACK
    cold.ready("m")
    await cold.drain()
    assert durations.stored["m"] == pytest.approx(0.5 * 42 + 0.5 * 30)  # smoothed


async def test_progress_names_the_phase_the_replica_announced() -> None:
    cold, durations, _, _ = cold_starts()
    durations.stored["m"] = 5.0
    cold.began("m")
    await cold.drain()
    assert cold.progress("m", 0.0) == "kaltstart: m is cold: starting a replica; waited 0.0 s, usually ready after 5 s"
    announcement = wire.Announcement(
        url="http://a", models=("m",), state="starting", phase="load", elapsed_s=1, interval_s=2
    )
    cold.announced(announcement, announcement.models)
    assert "loading the weights; waited 3.2 s" in cold.progress("m", 3.21)


def test_a_replicas_start_up_timings_are_observed_by_phase() -> None:
    cold, _, _, metrics = cold_starts()
    timings = wire.StartupTimings(process_s=None, cache_s=0.1, imports_s=2, load_s=0.5, warmup_s=0.2, total_s=2.8)
    cold.replica_started("m", timings)
    cold.dispatched("m", 0.004)

    def seconds(phase: str) -> float | None:
        return metrics.registry.get_sample_value("kaltstart_cold_start_seconds_sum", {"model": "m", "phase": phase})

    assert [seconds(p) for p in ("cache", "imports", "load", "warmup", "replica_total")] == [0.1, 2, 0.5, 0.2, 2.8]
    assert seconds("process") is None  # not known: not observed as 0
    assert seconds("ready_to_dispatch") == 0.004


async def test_a_cold_start_longer_than_its_model_s_budget_is_counted_when_it_ends() -> None:
    """``kaltstart_cold_starts_over_budget_total`` (the KaltstartColdStartOverBudget alert's): exported at 0 from
    the start of a model's first cold start, so that the first one over budget shows as an increase; counted when
    the start ends over budget, ready or given up."""
    clock, metrics = Clock(), Metrics()
    budgets = {"m": 60.0}
    cold = ColdStarts(
        durations=MemoryDurations(), endpoints=ReadyEndpoints(), metrics=metrics, budget_s=budgets.get, clock=clock
    )

    def over() -> float | None:
        return metrics.registry.get_sample_value("kaltstart_cold_starts_over_budget_total", {"model": "m"})

    assert over() is None
    cold.began("m")
    assert over() == 0
    clock.now += 60  # just in budget
    cold.ready("m")
    assert over() == 0
    cold.began("m")
    clock.now += 61
    cold.ready("m")
    assert over() == 1
    cold.began("m")
    clock.now += 90
    cold.abandoned("m")  # scaled back to zero, never ready: over budget all the same
    assert over() == 2
    cold.began("unknown")  # no budget (the model left the catalog): never over it
    clock.now += 1000
    cold.ready("unknown")
    assert metrics.registry.get_sample_value("kaltstart_cold_starts_over_budget_total", {"model": "unknown"}) == 0
    await cold.drain()
