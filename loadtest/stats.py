"""Percentiles, spreads (IQR, a seeded bootstrap CI) and unit helpers shared by the commands."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["added_latency", "bootstrap_ci", "difference", "iqr", "mean", "median", "ms", "percentile", "ratio"]

T = TypeVar("T")
#: Resamples of a bootstrap CI: enough for a stable 2.5th and 97.5th percentile, cheap for a handful of values.
BOOTSTRAP_RESAMPLES = 2000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def iqr(values: Sequence[float]) -> tuple[float, float] | None:
    """The 25th and 75th percentiles (the interquartile range's ends); None for fewer than two values."""
    if len(values) < 2:
        return None
    low, high = percentile(values, 25), percentile(values, 75)
    assert low is not None and high is not None
    return low, high


def bootstrap_ci(
    groups: Sequence[Sequence[T]],
    statistic: Callable[[Sequence[Sequence[T]]], float | None],
    *,
    seed: str | int,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float] | None:
    """A percentile bootstrap confidence interval of ``statistic(groups)``: each group resampled with replacement,
    independently of the others (put paired values in one group as tuples), ``resamples`` times, seeded, so the
    same input always gives the same interval. None when a group has fewer than two values (one value has no
    spread to resample) or the statistic is never defined."""
    if not groups or any(len(group) < 2 for group in groups):
        return None
    draw = random.Random(f"bootstrap:{seed}")
    found = []
    for _ in range(resamples):
        value = statistic([draw.choices(group, k=len(group)) for group in groups])
        if value is not None:
            found.append(value)
    tail = (1 - level) / 2 * 100
    low, high = percentile(found, tail), percentile(found, 100 - tail)
    return None if low is None or high is None else (low, high)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def added_latency(direct: Sequence[float], gateway: Sequence[float]) -> dict[str, float | None]:
    """Both sides' p50 and p99 latencies (seconds in, ms out) and what the gateway adds to each: the keys
    ``bench overhead`` and ``bench upstream`` share (differences of percentiles, not percentiles of differences)."""
    figures: dict[str, float | None] = {}
    for q in (50, 99):
        d, g = percentile(direct, q), percentile(gateway, q)
        figures |= {f"direct_p{q}_ms": ms(d), f"gateway_p{q}_ms": ms(g), f"added_p{q}_ms": ms(difference(g, d))}
    return figures
