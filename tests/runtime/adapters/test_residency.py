"""Which adapters hold the device's slots: least recently used first, within a count and a byte budget, never one
that running rows use."""

from __future__ import annotations

import pytest

from runtime.adapters.residency import Residency

pytestmark = pytest.mark.unit


def test_the_least_recently_used_unpinned_adapter_goes_first() -> None:
    residency = Residency(max_adapters=2)
    assert residency.room_for(10) == []
    assert residency.add("a", "a", 10) == 1
    assert residency.add("b", "b", 10) == 2
    residency.pin("a")  # a is now the most recently used, and in use
    assert residency.room_for(10) == ["b"]
    residency.unpin("a")
    assert residency.room_for(10) == ["b"]  # still: a was used more recently
    residency.pin("b")
    residency.unpin("b")
    assert residency.room_for(10) == ["a"]
    assert residency.evict("a") == 1
    assert residency.add("c", "c", 10) == 1  # the freed slot
    assert residency.names == ("b", "c")


def test_an_adapter_in_use_is_never_evicted() -> None:
    residency = Residency(max_adapters=2)
    residency.add("a", "a", 10)
    residency.add("b", "b", 10)
    residency.pin("a")
    residency.pin("b")
    assert residency.room_for(10) is None  # the new one waits
    with pytest.raises(ValueError, match="in use"):
        residency.evict("a")
    residency.unpin("b")
    assert residency.room_for(10) == ["b"]


def test_the_byte_budget_evicts_as_many_as_it_takes() -> None:
    residency = Residency(max_adapters=8, max_bytes=100)
    for key in "abc":
        residency.add(key, key, 30)
    assert residency.room_for(10) == []
    assert residency.room_for(40) == ["a"]
    assert residency.room_for(70) == ["a", "b"]
    residency.pin("a")
    assert residency.room_for(70) == ["b", "c"]
    assert residency.room_for(80) is None
    assert not residency.fits_alone(101) and residency.fits_alone(100)
    assert not Residency(max_adapters=0).fits_alone(1)
