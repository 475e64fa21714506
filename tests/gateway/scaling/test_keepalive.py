"""The adaptive keep-alive's rules (``gateway.scaling.keepalive``), on a clock the test moves: learning gaps from the
autoscaler's looks, the fallback to the fixed timeout, and the pre-warm's timing through ``desired_replicas``."""

from __future__ import annotations

import math

import pytest

from gateway.backends import Replicas
from gateway.scaling.keepalive import EDGES_S, MIN_GAPS, GapLearner, KeepAlive, cost, decide
from gateway.scaling.rules import desired_replicas, idle_threshold_s
from gateway.settings import ModelSettings

pytestmark = pytest.mark.unit

ADAPTIVE = ModelSettings(name="m", max_replicas=2, idle_timeout_s=300, idle_policy="adaptive", cold_start_cost_s=300)
#: A cron-like caller: one request every ten minutes.
PERIODIC = [600.0] * 20


def look(learner: GapLearner, at_s: float, demand: int, idle_for_s: float | None) -> float | None:
    return learner.observe(at_s, demand, idle_for_s)


def test_a_gap_is_learned_when_a_request_ends_it() -> None:
    learner = GapLearner()
    assert look(learner, 100.0, 0, 0.0) is None  # idle since 100
    assert look(learner, 101.0, 0, 1.0) is None
    assert look(learner, 130.0, 0, 30.0) is None  # the same idle period, looked at again
    assert look(learner, 131.0, 2, 0.0) == 31.0  # a request came: the gap ends at this look, at the latest
    assert look(learner, 132.0, 1, 0.0) is None  # busy
    assert learner.gaps == (31.0,)


def test_a_gap_ended_between_two_looks_is_learned_from_the_refreshed_activity() -> None:
    learner = GapLearner()
    look(learner, 100.0, 0, 0.0)
    look(learner, 150.0, 0, 50.0)
    # A request came and was answered between two looks: idle again, but since 150.5 instead of 100.
    assert look(learner, 151.0, 0, 0.5) == 50.5
    assert look(learner, 160.0, 0, 9.5) is None


def test_short_gaps_and_looks_without_idleness_teach_nothing() -> None:
    learner = GapLearner()
    look(learner, 0.0, 0, 0.0)
    look(learner, 1.0, 0, 1.0)
    assert look(learner, 1.5, 1, 0.0) is None  # 1.5 s: shorter than any keep-alive
    assert look(learner, 3.0, 0, None) is None  # never used
    assert learner.gaps == ()


def test_the_window_slides() -> None:
    learner = GapLearner(window=3)
    learner.add([10.0, 20.0, 30.0, 1.0])  # read back from Redis; 1 s is too short to keep
    for at in (100.0, 200.0):
        look(learner, at, 0, 40.0)
        look(learner, at + 1, 1, 0.0)
    assert learner.gaps == (30.0, 41.0, 41.0)


def test_too_few_gaps_fall_back_to_the_fixed_timeout() -> None:
    decision = decide(ADAPTIVE, PERIODIC[: MIN_GAPS - 1], cold_start_s=20.0)
    assert (decision.learned, decision.keep_s, decision.prewarm_at_s) == (False, 300.0, None)
    assert "learning from" in decision.reason


def test_gaps_without_a_pattern_to_exploit_fall_back_to_the_fixed_timeout() -> None:
    # Every gap is 3 s: the fixed timeout keeps the replica through all of them, as any learned choice would.
    decision = decide(ADAPTIVE, [3.0] * 50, cold_start_s=20.0)
    assert (decision.learned, decision.keep_s) == (False, 300.0)
    assert "nothing learned" in decision.reason


def test_a_periodic_caller_is_dropped_soon_and_pre_warmed_before_its_next_call() -> None:
    decision = decide(ADAPTIVE, PERIODIC, cold_start_s=20.0, shortest_keep_s=1.0)
    assert decision.learned
    assert decision.keep_s == EDGES_S[0]  # nothing comes back soon: drop at once
    assert decision.prewarm_at_s is not None and decision.prewarm_until_s is not None
    ready_at = decision.prewarm_at_s + 20.0
    assert 600.0 / 1.3 < ready_at <= 600.0 < decision.prewarm_until_s  # ready before the call, within one bin
    assert decision.warm_after(600.0, 20.0)
    # Cheaper than the fixed timeout on those gaps: 20 x (2 + 600 - ask) instead of 20 x 600.
    assert cost(PERIODIC, decision, 20.0, 300.0) < 0.5 * cost(PERIODIC, KeepAlive(300.0), 20.0, 300.0)


def test_no_pre_warm_while_the_cold_start_is_unknown() -> None:
    decision = decide(ADAPTIVE, PERIODIC, cold_start_s=None)
    assert decision.prewarm_at_s is None
    # Ten minutes between calls, a cold start worth 300 s: keeping the replica costs more than the cold start.
    assert decision.learned and decision.keep_s < 600.0


def test_a_dearer_cold_start_keeps_the_replica_longer() -> None:
    gaps = [30.0, 45.0, 60.0, 90.0, 120.0, 200.0, 400.0, 900.0, 1800.0, 3600.0] * 3
    keeps = [decide(ADAPTIVE.__class__(**{**vars(ADAPTIVE), "cold_start_cost_s": price}), gaps, None).keep_s
             for price in (10.0, 300.0, 100_000.0)]  # fmt: skip
    assert keeps[0] <= keeps[1] <= keeps[2]
    assert keeps[2] == math.inf  # a cold start worth a day of GPU time: never drop


def test_the_learned_choice_is_the_cheapest_fixed_keep_alive_or_better() -> None:
    gaps = [5.0, 7.0, 12.0, 80.0, 95.0, 110.0, 700.0, 720.0, 2000.0, 40.0, 8.0, 100.0]
    decision = decide(ADAPTIVE, gaps, cold_start_s=20.0)
    best = cost(gaps, decision, 20.0, 300.0)
    assert all(best <= cost(gaps, KeepAlive(edge), 20.0, 300.0) + 1e-6 for edge in EDGES_S)


def test_pre_warm_timing_through_the_scaling_rules() -> None:
    keep_alive = decide(ADAPTIVE, PERIODIC, cold_start_s=20.0, shortest_keep_s=1.0)
    assert keep_alive.prewarm_at_s is not None and keep_alive.prewarm_until_s is not None
    at, until = keep_alive.prewarm_at_s, keep_alive.prewarm_until_s
    one, none = Replicas(1, 1), Replicas(0, 0)

    def wanted(idle_for_s: float, now: Replicas) -> int:
        return desired_replicas(ADAPTIVE, 0, idle_for_s, now, keep_alive)

    assert wanted(1.0, one) == 1  # kept for the keep-alive...
    assert wanted(keep_alive.keep_s, one) == 0  # ...then dropped
    assert idle_threshold_s(ADAPTIVE, one, keep_alive) == keep_alive.keep_s  # what the fence re-checks
    assert wanted(at - 1, none) == 0
    assert wanted(at, none) == 1  # pre-warmed, cold-start seconds before the expected call
    assert wanted(until - 1, one) == 1
    assert wanted(until, one) == 0  # no call came: given up
    assert desired_replicas(ADAPTIVE, 3, 0.0, none, keep_alive) == 1  # demand rules as before


def test_pre_warm_respects_min_and_max_replicas() -> None:
    keep_alive = KeepAlive(keep_s=10.0, prewarm_at_s=100.0, prewarm_until_s=200.0, learned=True)
    floor = ModelSettings(name="m", min_replicas=2, max_replicas=3, idle_policy="adaptive")
    assert desired_replicas(floor, 0, 150.0, Replicas(2, 2), keep_alive) == 2
    assert desired_replicas(floor, 0, 50.0, Replicas(3, 3), keep_alive) == 2


def test_looks_may_be_far_apart_while_a_model_is_at_rest() -> None:
    learner = GapLearner()
    look(learner, 100.0, 0, 0.0)
    look(learner, 102.0, 0, 2.0)  # scaled down here; not looked at again until new work wakes the autoscaler
    assert look(learner, 700.5, 1, 0.0) == 600.5


def test_the_decision_is_recomputed_only_when_the_gaps_change() -> None:
    learner = GapLearner()
    learner.add(PERIODIC)
    first = learner.decision(ADAPTIVE, 20.0)
    assert learner.decision(ADAPTIVE, 20.0) is first
    look(learner, 0.0, 0, 0.0)
    look(learner, 700.0, 0, 700.0)
    look(learner, 701.0, 1, 0.0)
    assert learner.decision(ADAPTIVE, 20.0) is not first
