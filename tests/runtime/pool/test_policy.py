"""The pool's policy: which models leave the device and the host so that one more can be active."""

from __future__ import annotations

import pytest

from runtime.errors import ModelTooLarge
from runtime.pool.policy import Budgets, Move, Slot, make_room, park

pytestmark = pytest.mark.unit

MB = 1_000_000


def test_a_model_that_fits_beside_the_active_ones_moves_nothing() -> None:
    slots = [Slot("a", "active", 3 * MB, 1.0), Slot("b", "absent", 3 * MB, 0.0)]
    assert make_room(slots, "b", Budgets(device_bytes=6 * MB, host_bytes=0)) == []


def test_the_least_recently_used_idle_model_is_parked_first() -> None:
    slots = [
        Slot("a", "active", 3 * MB, 5.0),
        Slot("b", "active", 3 * MB, 2.0),
        Slot("c", "absent", 3 * MB, 0.0),
    ]
    assert make_room(slots, "c", Budgets(device_bytes=6 * MB, host_bytes=10 * MB)) == [Move("b", "parked")]


def test_a_busy_model_is_never_evicted_even_if_least_recently_used() -> None:
    slots = [
        Slot("a", "active", 3 * MB, 5.0),
        Slot("b", "active", 3 * MB, 2.0, busy=True),
        Slot("c", "absent", 3 * MB, 0.0),
    ]
    assert make_room(slots, "c", Budgets(device_bytes=6 * MB, host_bytes=10 * MB)) == [Move("a", "parked")]


def test_when_only_busy_models_could_make_room_the_caller_waits() -> None:
    slots = [Slot("a", "active", 3 * MB, 1.0, busy=True), Slot("b", "parked", 3 * MB, 0.0)]
    assert make_room(slots, "b", Budgets(device_bytes=4 * MB, host_bytes=10 * MB)) is None


def test_a_full_host_drops_its_least_recently_used_parked_model_to_disk() -> None:
    slots = [
        Slot("a", "active", 3 * MB, 9.0),
        Slot("b", "parked", 3 * MB, 2.0),
        Slot("c", "parked", 3 * MB, 7.0),
        Slot("d", "absent", 3 * MB, 0.0),
    ]
    moves = make_room(slots, "d", Budgets(device_bytes=4 * MB, host_bytes=6 * MB))
    assert moves == [Move("b", "absent"), Move("a", "parked")]


def test_the_model_leaving_the_device_goes_to_disk_if_it_is_the_least_recently_used() -> None:
    slots = [
        Slot("a", "active", 3 * MB, 1.0),
        Slot("b", "parked", 3 * MB, 8.0),
        Slot("c", "absent", 3 * MB, 0.0),
    ]
    moves = make_room(slots, "c", Budgets(device_bytes=4 * MB, host_bytes=4 * MB))
    assert moves == [Move("a", "absent")]


def test_a_parked_model_being_woken_keeps_its_host_memory_until_it_is_on_the_device() -> None:
    """The moves run before the wake: the host holds the wanted model and the one leaving at once, or the one
    leaving goes to disk."""
    slots = [Slot("a", "active", 3 * MB, 5.0), Slot("b", "parked", 3 * MB, 1.0)]
    assert make_room(slots, "b", Budgets(device_bytes=4 * MB, host_bytes=4 * MB)) == [Move("a", "absent")]
    assert make_room(slots, "b", Budgets(device_bytes=4 * MB, host_bytes=6 * MB)) == [Move("a", "parked")]


def test_no_host_budget_means_never_parking() -> None:
    slots = [Slot("a", "active", 3 * MB, 5.0), Slot("b", "absent", 3 * MB, 0.0)]
    assert make_room(slots, "b", Budgets(device_bytes=4 * MB, host_bytes=0)) == [Move("a", "absent")]


def test_several_small_models_leave_for_one_large_one() -> None:
    slots = [
        Slot("a", "active", 2 * MB, 3.0),
        Slot("b", "active", 2 * MB, 1.0),
        Slot("c", "active", 2 * MB, 2.0),
        Slot("big", "absent", 5 * MB, 0.0),
    ]
    moves = make_room(slots, "big", Budgets(device_bytes=6 * MB, host_bytes=10 * MB))
    assert moves == [Move("b", "parked"), Move("c", "parked"), Move("a", "parked")]


def test_a_model_larger_than_the_device_budget_can_never_be_active() -> None:
    with pytest.raises(ModelTooLarge):
        make_room([Slot("a", "absent", 5 * MB, 0.0)], "a", Budgets(device_bytes=4 * MB, host_bytes=0))


def test_a_park_asked_for_makes_room_in_host_memory_as_budget_pressure_does() -> None:
    slots = [Slot("a", "active", 3 * MB, 5.0), Slot("b", "parked", 3 * MB, 2.0), Slot("c", "parked", 3 * MB, 4.0)]
    assert park(slots, "a", Budgets(device_bytes=6 * MB, host_bytes=10 * MB)) == [Move("a", "parked")]
    # The host holds two: b, used least recently, goes to disk first.
    assert park(slots, "a", Budgets(device_bytes=6 * MB, host_bytes=6 * MB)) == [
        Move("b", "absent"),
        Move("a", "parked"),
    ]
    # No host budget: a goes to disk itself.
    assert park(slots[:1], "a", Budgets(device_bytes=6 * MB, host_bytes=0)) == [Move("a", "absent")]
