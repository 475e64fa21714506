"""The three-state keep-alive's rules (``gateway.scaling.parking``): the state machine, the pool's replica, the cost
of a pair on recorded gaps (hand-computed), and the learned pair, whose waiting is counted per waiting request."""

from __future__ import annotations

import math

import pytest

from gateway.scaling.keepalive import MIN_GAPS
from gateway.scaling.parking import (
    ABSENT,
    ACTIVE,
    PARKED,
    Gap,
    GapCost,
    LookedGaps,
    Parking,
    ParkingLearner,
    Prices,
    cost,
    decide,
    next_change_s,
    next_state,
    pool_replicas,
    unit_idle,
)

pytestmark = pytest.mark.unit

PAIR = Parking(park_after_s=10.0, idle_timeout_s=60.0)
#: A wake of 1 s, a load of 20 s, 300 device-seconds per request that meets a load (15 per request meeting a wake).
PRICES = Prices(wake_s=1.0, load_s=20.0, per_request_s=300.0, host_price=0.05)


def test_an_idle_model_is_parked_then_unloaded_and_demand_makes_it_active() -> None:
    assert next_state(ACTIVE, 0, 9.9, PAIR) == ACTIVE
    assert next_state(ACTIVE, 0, 10.0, PAIR) == PARKED
    assert next_state(PARKED, 0, 59.9, PAIR) == PARKED
    assert next_state(PARKED, 0, 60.0, PAIR) == ABSENT
    assert next_state(ACTIVE, 0, 61.0, PAIR) == ABSENT  # looked at late: straight to absent
    assert next_state(ABSENT, 0, 1000.0, PAIR) == ABSENT
    assert next_state(ACTIVE, 0, None, PAIR) == ACTIVE  # busy, or never seen
    for state in (ACTIVE, PARKED, ABSENT):
        assert next_state(state, 1, 1000.0, PAIR) == ACTIVE


def test_when_an_idle_model_next_changes() -> None:
    assert next_change_s(ACTIVE, PAIR) == 10.0
    assert next_change_s(PARKED, PAIR) == 60.0
    assert next_change_s(ABSENT, PAIR) is None
    assert next_change_s(ACTIVE, Parking(math.inf, math.inf)) is None
    assert next_change_s(PARKED, Parking(5.0, math.inf)) is None
    with pytest.raises(ValueError, match="park-after"):
        Parking(park_after_s=60.0, idle_timeout_s=10.0)


def test_the_pool_replica_goes_to_zero_only_when_every_model_is_absent_and_none_is_wanted() -> None:
    assert pool_replicas([ABSENT, ABSENT], demand=0) == 0
    assert pool_replicas([], demand=0) == 0
    assert pool_replicas([ABSENT, PARKED], demand=0) == 1  # host memory of that replica holds it
    assert pool_replicas([ACTIVE, ABSENT], demand=0) == 1
    assert pool_replicas([ABSENT, ABSENT], demand=1) == 1


def test_cost_of_a_pair_by_hand() -> None:
    gaps = [Gap(5.0, 1, 1), Gap(30.0, 3, 4), Gap(100.0, 7, 50)]
    # 5 s < P: 5 device-seconds. 30 s: parked at 10, woken: 10 + 1 device, 20 host, 3 requests wait on the wake.
    # 100 s >= U: parked at 10, unloaded at 60, loaded: 10 + 20 device, 50 host, 50 requests wait on the load.
    assert cost(gaps, PAIR, PRICES) == GapCost(device_s=46.0, host_s=70.0, wake_requests=3, load_requests=50)
    # 46 + 0.05 x 70 + 3 x 300 x 1/20 + 50 x 300
    assert cost(gaps, PAIR, PRICES).total(PRICES) == pytest.approx(46 + 3.5 + 45 + 15_000)


#: Two-hour gaps, each ended by a burst of 100 requests (all within the wake).
BURSTS = [Gap(7200.0, 100, 100)] * MIN_GAPS
FALLBACK = Parking(park_after_s=15.0, idle_timeout_s=300.0)


def test_a_load_that_a_burst_waits_on_is_paid_per_waiting_request_so_the_model_stays_parked() -> None:
    learned = decide(BURSTS, PRICES, FALLBACK, shortest_keep_s=1.0)
    # Parked through the gap: P + 1 + 0.05 x (7200 - P) + 100 x 15 ~ 1,861 device-seconds a gap. Unloaded: P + 20
    # + 100 x 300 = 30,020 at least. Counted once, as the adaptive keep-alive counts a cold start, the load would
    # cost 320 against ~376 parked (the host memory of two hours), and the model would be unloaded.
    assert learned.learned
    assert learned.idle_timeout_s > 7200.0
    assert learned.park_after_s == 2.0  # the shortest candidate: a gap longer than it is parked at once
    once = [Gap(7200.0, 1, 1)] * MIN_GAPS
    assert decide(once, PRICES, FALLBACK, shortest_keep_s=1.0).idle_timeout_s < 7200.0


def test_the_learned_pair_is_the_cheapest_candidate_on_the_recorded_gaps() -> None:
    # Gaps of 30 s with one request each: parking at 2 s costs 2 + 1 + 0.05 x 28 + 15 = 19.4 a gap, keeping the
    # model active 30; unloading can only add the load. Against the fallback (15 s, 300 s): 15 + 1 + 0.75 + 15.
    gaps = [Gap(30.0, 1, 1)] * 10
    learned = decide(gaps, PRICES, FALLBACK, shortest_keep_s=1.0)
    assert (learned.park_after_s, learned.idle_timeout_s) == (2.0, math.inf)
    assert cost(gaps, learned, PRICES).total(PRICES) == pytest.approx(10 * 19.4)
    assert "learned from 10 idle gaps" in learned.reason


def test_too_few_gaps_or_no_saving_keep_the_fixed_pair() -> None:
    few = decide([Gap(30.0, 1, 1)] * (MIN_GAPS - 1), PRICES, FALLBACK)
    assert (few.park_after_s, few.idle_timeout_s, few.learned) == (15.0, 300.0, False)
    # Gaps of 3 s: kept active under both (the fallback keeps 15 s), nothing to save.
    same = decide([Gap(3.0, 1, 1)] * 20, PRICES, FALLBACK)
    assert not same.learned and "saves 5 %" in same.reason


def test_the_learner_counts_the_requests_that_arrive_within_a_wake_and_a_load_of_a_gap_end() -> None:
    learner = ParkingLearner(wake_s=1.0, load_s=20.0)
    learner.arrived(100.0, idle_since_s=0.0)  # a 100 s gap ends
    learner.arrived(100.5, idle_since_s=None)  # within the wake
    learner.arrived(110.0, idle_since_s=None)  # within the load
    assert not learner.gaps  # still counting until 120
    learner.arrived(121.0, idle_since_s=120.5)  # 0.5 s idle: too short to be a gap; closes the first
    assert learner.gaps == (Gap(100.0, 2, 3),)
    learner.decision(200.0, PRICES, FALLBACK)
    assert learner.gaps == (Gap(100.0, 2, 3),)
    learner.arrived(300.0, idle_since_s=250.0)
    assert learner.decision(320.0, PRICES, FALLBACK) == decide([Gap(100.0, 2, 3), Gap(50.0, 1, 1)], PRICES, FALLBACK)
    assert len(learner.gaps) == 2


def test_a_pool_is_idle_once_every_model_was_idle_for_its_own_threshold() -> None:
    # a: 60 s threshold, b: 600 s. The pool's keep-alive is the longest; its idle-for reaches it with the last model.
    assert unit_idle([700.0, 300.0], [60.0, 600.0]) == (300.0, 600.0)  # b lacks 300 s
    assert unit_idle([700.0, 600.0], [60.0, 600.0]) == (600.0, 600.0)  # both there: idle for the keep-alive
    assert unit_idle([30.0, 900.0], [60.0, 600.0]) == (570.0, 600.0)  # a lacks 30 s
    assert unit_idle([None, 10.0], [60.0, 600.0]) == (10.0, 600.0)  # a never used: only b counts
    assert unit_idle([None, None], [60.0, 600.0]) == (None, 600.0)
    assert unit_idle([9e9, 9e9], [60.0, math.inf]) == (0.0, math.inf)  # a model never unloaded holds the pool


def test_gaps_are_counted_from_the_autoscaler_s_looks() -> None:
    learner = ParkingLearner(wake_s=1.0, load_s=20.0)
    looks = LookedGaps(learner)
    for now in (10.0, 11.0, 50.0):  # idle since 0
        looks.observe(now, 0, now, PRICES)
    looks.observe(100.0, 3, 0.0, PRICES)  # a 100 s gap ends at this look: 3 requests wait
    assert looks.due_s(100.0, PRICES) == 1.0  # its wake window ends in 1 s
    looks.observe(100.6, 5, 0.0, PRICES)  # within the wake: 5 waiting
    looks.observe(101.6, 7, 0.0, PRICES)  # after the wake, within the load
    assert looks.due_s(101.6, PRICES) == pytest.approx(18.4)  # the load window ends at 120
    assert not learner.gaps
    looks.observe(119.0, 2, 0.0, PRICES)
    looks.observe(120.0, 0, 0.5, PRICES)  # the load window is over: the gap is handed on
    assert learner.gaps == (Gap(100.0, 5, 7),)
    assert looks.due_s(120.0, PRICES) is None


def test_a_request_that_came_and_went_between_looks_ends_a_gap_with_one_waiting() -> None:
    learner = ParkingLearner(wake_s=1.0, load_s=20.0)
    looks = LookedGaps(learner)
    looks.observe(30.0, 0, 30.0, PRICES)  # idle since 0
    looks.observe(61.0, 0, 1.0, PRICES)  # idle since 60: a request came and went
    looks.observe(90.0, 0, 30.0, PRICES)
    assert learner.gaps == (Gap(60.0, 1, 1),)
