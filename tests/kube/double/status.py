"""A Deployment's status, computed from the fake pods that belong to it.

Counts are omitted when zero, as the real API's ``omitempty`` int32 fields are: a client must read a missing
``readyReplicas`` as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from .pods import template_hash
from .store import now_timestamp


class PodState(Protocol):
    @property
    def ready(self) -> bool: ...

    terminating: bool
    template_hash: str


def _max_unavailable(deployment: dict[str, Any], desired: int) -> int:
    strategy = (deployment["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    value = strategy.get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.floor(desired * int(value[:-1]) / 100)
    return int(value)


def _condition(old: list[dict[str, Any]], kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
    previous = next((c for c in old if c.get("type") == kind), None)
    now = now_timestamp()
    changed = previous is None or previous.get("status") != str(value) or previous.get("reason") != reason
    return {
        "type": kind,
        "status": str(value),
        "lastUpdateTime": now if changed or previous is None else previous.get("lastUpdateTime", now),
        "lastTransitionTime": now if changed or previous is None else previous.get("lastTransitionTime", now),
        "reason": reason,
        "message": message,
    }


def deployment_status(deployment: dict[str, Any], pods: Sequence[PodState]) -> dict[str, Any]:
    desired = deployment["spec"].get("replicas", 1)
    live = [pod for pod in pods if not pod.terminating]
    ready = sum(pod.ready for pod in live)
    current = template_hash(deployment["spec"]["template"])
    counts = {
        "replicas": len(live),
        "updatedReplicas": sum(pod.template_hash == current for pod in live),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(desired - ready, 0),
    }
    available = ready >= desired - _max_unavailable(deployment, desired)
    old = (deployment.get("status") or {}).get("conditions") or []
    name = deployment["metadata"]["name"]
    conditions = [
        _condition(
            old,
            "Available",
            available,
            "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
        ),
        _condition(old, "Progressing", True, "NewReplicaSetAvailable", f'Deployment "{name}" has pods running.'),
    ]
    status: dict[str, Any] = {"observedGeneration": deployment["metadata"].get("generation", 1)}
    status.update({field: count for field, count in counts.items() if count})
    status["conditions"] = conditions
    return status
