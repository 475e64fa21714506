from __future__ import annotations

import pytest

from gateway.backends import Replicas
from gateway.scaling.rules import desired_replicas
from gateway.settings import ModelSettings

pytestmark = pytest.mark.unit

S = ModelSettings(name="m", max_replicas=3, idle_timeout_s=60, cold_start_timeout_s=300, target_queue_per_replica=10)


def test_demand_scales_from_zero_to_one() -> None:
    assert desired_replicas(S, demand=1, idle_for_s=0, now=Replicas(0, 0)) == 1


def test_demand_scales_out_up_to_max() -> None:
    assert desired_replicas(S, demand=25, idle_for_s=0, now=Replicas(1, 1)) == 3
    assert desired_replicas(S, demand=1000, idle_for_s=0, now=Replicas(1, 1)) == 3


def test_never_scales_in_while_busy() -> None:
    assert desired_replicas(S, demand=1, idle_for_s=0, now=Replicas(3, 3)) == 3


def test_idle_scales_to_min() -> None:
    assert desired_replicas(S, demand=0, idle_for_s=59, now=Replicas(2, 2)) == 2
    assert desired_replicas(S, demand=0, idle_for_s=60, now=Replicas(2, 2)) == 0
    floor = ModelSettings(name="m", min_replicas=1, max_replicas=2)
    assert desired_replicas(floor, demand=0, idle_for_s=10_000, now=Replicas(2, 2)) == 1
    assert desired_replicas(floor, demand=0, idle_for_s=None, now=Replicas(0, 0)) == 1


def test_starting_replica_gets_its_cold_start_budget() -> None:
    starting = Replicas(desired=1, ready=0)
    assert desired_replicas(S, demand=0, idle_for_s=120, now=starting) == 1
    assert desired_replicas(S, demand=0, idle_for_s=300, now=starting) == 0
