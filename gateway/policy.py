"""The scaling rules, as pure functions of (settings, load, replicas). The autoscaler applies them to live
state; ``loadtest simulate`` applies the very same functions to a trace on a virtual clock.

Rules:
1. Demand (queued + in flight) > 0: at least one replica, and one more per ``target_queue_per_replica``
   requests of demand, up to ``max_replicas``. Never fewer than there are now while there is demand.
2. No demand, idle for ``idle_timeout`` or longer: ``min_replicas``. But a replica still starting is not scaled
   away for being idle until the model has been idle for ``cold_start_timeout`` too, so a slow node is given its
   full cold-start budget, while a replica that never gets ready does not hold a GPU forever.
3. Otherwise: keep what there is (but at least ``min_replicas``).
"""

from __future__ import annotations

import math

from gateway.backends import Replicas
from gateway.settings import ModelSettings


def wanted_for_demand(settings: ModelSettings, demand: int) -> int:
    if demand <= 0:
        return 0
    return min(settings.max_replicas, max(1, math.ceil(demand / settings.target_queue_per_replica)))


def idle_threshold_s(settings: ModelSettings, now: Replicas) -> float:
    """How long a model must have been idle before it is scaled down (rule 2)."""
    if now.starting > 0:
        return max(settings.idle_timeout_s, settings.cold_start_timeout_s)
    return settings.idle_timeout_s


def desired_replicas(settings: ModelSettings, demand: int, idle_for_s: float | None, now: Replicas) -> int:
    floor = settings.min_replicas
    if demand > 0:
        return max(now.desired, wanted_for_demand(settings, demand), floor)
    idle = idle_for_s is None or idle_for_s >= idle_threshold_s(settings, now)
    return floor if idle else max(now.desired, floor)
