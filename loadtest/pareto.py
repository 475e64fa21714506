"""The keep-alive trade, as ``simulate`` reports it: which fixed idle timeouts an adaptive point is Pareto-better
than (no more replica-seconds and no more requests that met a cold start, and fewer of one), and which are better
than it; and how far it lies from the line joining the fixed points (a fixed timeout between two of them would
lie near that line).

A pool row (``simulate --pool``) is compared with the fixed pool pairs only, on ``POOL_AXES``: GPU
replica-seconds, requests that met a load, requests that met a wake, and model-seconds on the device (the share of
the device budget its models hold: what parking gives back). A deployment row is compared with the fixed
deployment timeouts only, on replica-seconds and cold-start requests, as before."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from loadtest.results import PolicyResult

__all__ = ["POOL_AXES", "axes", "beaten_by", "beats", "dominates", "frontier_gap", "is_fixed"]

#: What a pool row is compared on, each the lower the better.
POOL_AXES = ("GPU replica-seconds", "cold-start requests", "wake requests", "model device-seconds")


def axes(result: PolicyResult) -> tuple[float, ...]:
    """The counts ``result`` is compared on (``POOL_AXES`` for a pool row)."""
    if result.pool is None:
        return (result.replica_seconds, result.cold_start_requests)
    pool = result.pool
    return (result.replica_seconds, result.cold_start_requests, pool.wake_requests, pool.device_model_seconds)


def dominates(a: PolicyResult, b: PolicyResult) -> bool:
    """``a`` costs no more than ``b`` on every count and less on one."""
    mine, theirs = axes(a), axes(b)
    if len(mine) != len(theirs):
        return False
    no_worse = all(x <= y for x, y in zip(mine, theirs, strict=True))
    return no_worse and any(x < y for x, y in zip(mine, theirs, strict=True))


def is_fixed(result: PolicyResult) -> bool:
    return result.cold_start_cost_s is None


def _fixed_peers(result: PolicyResult, results: Sequence[PolicyResult]) -> list[PolicyResult]:
    """The fixed policies of the same kind: pool pairs for a pool row, deployment timeouts for the others."""
    return [r for r in results if is_fixed(r) and (r.pool is None) == (result.pool is None)]


def beats(result: PolicyResult, results: Sequence[PolicyResult]) -> list[str]:
    """The fixed policies ``result`` dominates."""
    return [other.name for other in _fixed_peers(result, results) if dominates(result, other)]


def beaten_by(result: PolicyResult, results: Sequence[PolicyResult]) -> list[str]:
    """The fixed policies that dominate ``result``."""
    return [other.name for other in _fixed_peers(result, results) if dominates(other, result)]


def frontier_gap(result: PolicyResult, results: Sequence[PolicyResult]) -> float | None:
    """``result``'s replica-seconds relative to the fixed policies' line at its count of cold-start requests (the
    two fixed points around it, joined): -0.2 = 20 % fewer replica-seconds than the fixed timeouts need for as
    few cold-start requests. None outside the fixed points' range, and for a pool row (more than two counts)."""
    if result.pool is not None:
        return None
    fixed = _fixed_peers(result, results)
    front = [r for r in fixed if not any(dominates(other, r) for other in fixed)]
    points = sorted({(r.cold_start_requests, r.replica_seconds) for r in front})
    y = result.cold_start_requests
    for (y0, x0), (y1, x1) in itertools.pairwise(points):
        if y0 <= y <= y1:
            line = x0 if y1 == y0 else x0 + (x1 - x0) * (y - y0) / (y1 - y0)
            return result.replica_seconds / line - 1 if line > 0 else None
    return None
