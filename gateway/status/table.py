"""``status`` rendered: a fixed-width table for people, and JSON for scripts (``SCHEMA``, documented in
docs/operations.md, "What is broken now"; fields are only ever added, a change of meaning gets a new schema name)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from gateway.status.report import ModelStatus

SCHEMA = "kaltstart.status/v1"

COLUMNS = (
    "MODEL", "READY/DESIRED", "QUEUED", "IN FLIGHT", "LAST ACTIVITY", "STATE", "KEEP-ALIVE", "COLD START", "POOL",
)  # fmt: skip

_STATE_TEXT = {"at_rest": "at rest", "scaling_up": "scaling up", "scaling_down": "scaling down"}


def duration(seconds: float) -> str:
    """``0.8s``, ``42s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // smaller_size:02d}{smaller}"
    return f"{whole}s"


def _keep_alive_text(status: ModelStatus) -> str:
    keep_alive = status.keep_alive
    if status.served.settings.idle_policy != "adaptive":
        how = "fixed"
    else:
        how = "learned" if keep_alive.learned else "adaptive, not learned"
    text = f"{duration(keep_alive.keep_s)} {how}"
    if keep_alive.prewarm_at_s is not None and keep_alive.prewarm_until_s is not None:
        text += f", pre-warm {duration(keep_alive.prewarm_at_s)}-{duration(keep_alive.prewarm_until_s)}"
    return text


def _state_text(status: ModelStatus) -> str:
    text = _STATE_TEXT.get(status.state, status.state)
    down_in = status.scale_down_in_s
    return text if down_in is None else f"{text}, down in {duration(down_in)}"


def _pool_text(status: ModelStatus) -> str:
    pool = status.served.pool
    if not status.served.pooled:
        return "-"
    if not pool:
        return "?"
    held = [f"{state} {count}" for state, count in pool.items() if count]
    return ", ".join(held) if held else "none ready"


def row(status: ModelStatus) -> tuple[str, ...]:
    replicas, load = status.served.replicas, status.load
    return (
        status.name,
        "?" if replicas is None else f"{replicas.ready}/{replicas.desired}",
        str(load.queued),
        str(load.in_flight),
        "never" if load.idle_for_s is None else f"{duration(load.idle_for_s)} ago",
        _state_text(status),
        _keep_alive_text(status),
        "-" if status.cold_start_s is None else duration(status.cold_start_s),
        _pool_text(status),
    )


def render_table(statuses: Sequence[ModelStatus], source: str) -> str:
    """The table, columns as wide as their widest cell, and a last line naming where the replicas came from."""
    rows = [COLUMNS, *(row(s) for s in statuses)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not statuses:
        lines.append("(no models)")
    lines.append(f"replicas from {source}")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 3) if math.isfinite(value) else None


def as_json(status: ModelStatus) -> dict[str, Any]:
    served, load, keep_alive = status.served, status.load, status.keep_alive
    replicas = served.replicas
    return {
        "model": status.name,
        "unit": served.unit,
        "replicas": None if replicas is None else {"desired": replicas.desired, "ready": replicas.ready},
        "queued": load.queued,
        "in_flight": load.in_flight,
        "last_activity_age_s": _number(load.idle_for_s),
        "state": status.state,
        "scale_down_in_s": _number(status.scale_down_in_s),
        "keep_alive": {
            "policy": served.settings.idle_policy,
            "keep_s": _number(keep_alive.keep_s),
            "prewarm_at_s": _number(keep_alive.prewarm_at_s),
            "prewarm_until_s": _number(keep_alive.prewarm_until_s),
            "learned": keep_alive.learned,
            "reason": keep_alive.reason,
        },
        "cold_start_s": _number(status.cold_start_s),
        "pool": dict(served.pool) if served.pooled and served.pool is not None else None,
    }


def render_json(statuses: Sequence[ModelStatus], backend: str, source: str) -> str:
    document = {
        "schema": SCHEMA,
        "backend": backend,
        "replicas_from": source,
        "models": [as_json(s) for s in statuses],
    }
    return json.dumps(document, indent=2) + "\n"
