"""The keep-alive trade, as ``simulate`` reports it: which fixed idle timeouts an adaptive point is Pareto-better
than (no more replica-seconds and no more requests that met a cold start, and fewer of one), and which are better
than it; and how far it lies from the line joining the fixed points (a fixed timeout between two of them would
lie near that line)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from loadtest.results import PolicyResult

__all__ = ["beaten_by", "beats", "dominates", "frontier_gap", "is_fixed"]


def dominates(a: PolicyResult, b: PolicyResult) -> bool:
    """``a`` costs no more than ``b`` on both counts and less on one."""
    no_worse = a.replica_seconds <= b.replica_seconds and a.cold_start_requests <= b.cold_start_requests
    better = a.replica_seconds < b.replica_seconds or a.cold_start_requests < b.cold_start_requests
    return no_worse and better


def is_fixed(result: PolicyResult) -> bool:
    return result.cold_start_cost_s is None


def beats(result: PolicyResult, results: Sequence[PolicyResult]) -> list[str]:
    """The fixed policies ``result`` dominates."""
    return [other.name for other in results if is_fixed(other) and dominates(result, other)]


def beaten_by(result: PolicyResult, results: Sequence[PolicyResult]) -> list[str]:
    """The fixed policies that dominate ``result``."""
    return [other.name for other in results if is_fixed(other) and dominates(other, result)]


def frontier_gap(result: PolicyResult, results: Sequence[PolicyResult]) -> float | None:
    """``result``'s replica-seconds relative to the fixed policies' line at its count of cold-start requests (the
    two fixed points around it, joined): -0.2 = 20 % fewer replica-seconds than the fixed timeouts need for as
    few cold-start requests. None outside the fixed points' range."""
    fixed = [r for r in results if is_fixed(r)]
    front = [r for r in fixed if not any(dominates(other, r) for other in fixed)]
    points = sorted({(r.cold_start_requests, r.replica_seconds) for r in front})
    y = result.cold_start_requests
    for (y0, x0), (y1, x1) in itertools.pairwise(points):
        if y0 <= y <= y1:
            line = x0 if y1 == y0 else x0 + (x1 - x0) * (y - y0) / (y1 - y0)
            return result.replica_seconds / line - 1 if line > 0 else None
    return None
