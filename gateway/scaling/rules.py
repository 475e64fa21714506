"""The scaling rules, as pure functions of (settings, load, replicas). The autoscaler applies them to live
state; ``loadtest simulate`` applies the very same functions to a trace on a virtual clock.

Rules:
1. Demand (queued + in flight) > 0: at least one replica, and one more per ``target_queue_per_replica``
   requests of demand, up to ``max_replicas``. Never fewer than there are now while there is demand.
2. No demand, idle for ``idle_timeout`` or longer: ``min_replicas``. But a replica still starting is not scaled
   away for being idle until the model has been idle for ``cold_start_timeout`` too, so a slow node is given its
   full cold-start budget, while a replica that never gets ready does not hold a GPU forever.
3. Otherwise: keep what there is (but at least ``min_replicas``).

With ``idle-policy = "adaptive"`` the caller passes the model's learned ``KeepAlive`` (``gateway.scaling.keepalive``):
its
keep-alive replaces ``idle_timeout`` in rule 2, and during its pre-warm window an idle model gets one replica
(at least ``min_replicas``, at most ``max_replicas``) ahead of the request it expects.
"""

from __future__ import annotations

import math

from gateway.backends import Replicas
from gateway.scaling.keepalive import KeepAlive
from gateway.settings import ModelSettings


def wanted_for_demand(settings: ModelSettings, demand: int) -> int:
    if demand <= 0:
        return 0
    return min(settings.max_replicas, max(1, math.ceil(demand / settings.target_queue_per_replica)))


def idle_threshold_s(settings: ModelSettings, now: Replicas, keep_alive: KeepAlive | None = None) -> float:
    """How long a model must have been idle before it is scaled down (rule 2)."""
    keep_s = settings.idle_timeout_s if keep_alive is None else keep_alive.keep_s
    if now.starting > 0:
        return max(keep_s, settings.cold_start_timeout_s)
    return keep_s


def desired_replicas(
    settings: ModelSettings,
    demand: int,
    idle_for_s: float | None,
    now: Replicas,
    keep_alive: KeepAlive | None = None,
) -> int:
    floor = settings.min_replicas
    if demand > 0:
        return max(now.desired, wanted_for_demand(settings, demand), floor)
    if keep_alive is not None and idle_for_s is not None and keep_alive.prewarming(idle_for_s):
        return max(now.desired, min(settings.max_replicas, max(1, floor)))
    idle = idle_for_s is None or idle_for_s >= idle_threshold_s(settings, now, keep_alive)
    return floor if idle else max(now.desired, floor)
