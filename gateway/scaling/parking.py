"""The three-state keep-alive of a pool, as pure functions of a model's state, its idleness and its learned gaps.

A model served by a pool replica (``runtime/pool``) is *active* (weights on the device), *parked* (weights in host
memory: woken in ``wake_s``) or *absent* (on disk: loaded in ``load_s``, a cold start). The rules
(``next_state``, ``pool_replicas``):

1. A model with demand (queued + in flight) is active (woken or loaded if it was not).
2. Idle for ``park_after_s``: active -> parked. Idle for ``idle_timeout_s``: active or parked -> absent.
3. The pool's replica goes to zero when every model of the pool is absent and none has demand.

The fixed variant takes the two durations as set (``Parking(park_after_s, idle_timeout_s)``). The learned variant
(``decide``) extends the adaptive keep-alive (``gateway.scaling.keepalive``): from the model's recent idle gaps, each
with the number of requests that arrived within ``wake_s`` and within ``load_s`` of its end (``Gap``: the requests
that would wait on a wake, or on a load, ending it), it picks the pair that minimises, over the gaps, device-seconds
+ ``host_price`` x host-memory-seconds + the waiting it causes, counted **per waiting request**: each request that
meets a load costs ``per_request_s`` (``cold-start-cost``), each that meets a wake ``per_request_s x wake_s /
load_s``. The adaptive keep-alive counts a cold start once, however many requests meet it; on the Azure trace one
meets ~100. Gap by gap (P = ``park_after_s``, U = ``idle_timeout_s``, P <= U):

==================  ===============  ===============  =====================================
gap ``g``           device-seconds   host-seconds     waiting requests
==================  ===============  ===============  =====================================
g < P               g                0                none
P <= g < U          P + wake_s       g - P            those within ``wake_s`` of its end
g >= U              P + load_s       U - P            those within ``load_s`` of its end
==================  ===============  ===============  =====================================

Device- and host-seconds are the model's own share of the pool (its weights on the device, in host memory); the
pool replica itself is held while any model is active or parked (rule 3). Candidates are the keep-alive's histogram
edges (``keepalive.EDGES_S``) and infinity; the fixed pair stays in force while there are fewer than
``keepalive.MIN_GAPS`` gaps and when the learned pair does not cost at most ``keepalive.MUST_SAVE`` of it on the
same gaps.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

from gateway.scaling.keepalive import EDGES_S, MIN_GAPS, MUST_SAVE, SHORTEST_GAP_S, WINDOW, GapLearner

__all__ = [
    "ABSENT",
    "ACTIVE",
    "PARKED",
    "Gap",
    "GapCost",
    "LookedGaps",
    "Parking",
    "ParkingLearner",
    "Prices",
    "State",
    "cost",
    "decide",
    "next_change_s",
    "next_state",
    "pool_replicas",
    "unit_idle",
]

State = Literal["active", "parked", "absent"]
ACTIVE: State = "active"
PARKED: State = "parked"
ABSENT: State = "absent"

#: What a host-memory-second of a parked model costs, in device-seconds of the same model: pinned host RAM for a
#: model's weights rents for a few percent of the GPU that holds them.
HOST_PRICE = 0.05


@dataclass(frozen=True)
class Parking:
    """When an idle model is parked and when it is unloaded (idle seconds; ``math.inf``: never)."""

    park_after_s: float
    idle_timeout_s: float
    learned: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.park_after_s <= self.idle_timeout_s:
            raise ValueError(f"park-after {self.park_after_s} s must lie in [0, idle-timeout {self.idle_timeout_s} s]")

    def describe(self) -> str:
        return f"park after {self.park_after_s:g} s, unload after {self.idle_timeout_s:g} s ({self.reason})"


def next_state(state: State, demand: int, idle_for_s: float | None, plan: Parking) -> State:
    """Rules 1 and 2 for one model (``idle_for_s`` None: not idle, or never seen)."""
    if demand > 0:
        return ACTIVE
    if idle_for_s is None or state == ABSENT:
        return state
    if idle_for_s >= plan.idle_timeout_s:
        return ABSENT
    if idle_for_s >= plan.park_after_s:
        return PARKED
    return state


def next_change_s(state: State, plan: Parking) -> float | None:
    """The idle time at which an idle model in ``state`` next changes state (None: never), so a caller need look
    at it only then."""
    if state == ACTIVE:
        return min(plan.park_after_s, plan.idle_timeout_s) if math.isfinite(plan.park_after_s) else None
    if state == PARKED:
        return plan.idle_timeout_s if math.isfinite(plan.idle_timeout_s) else None
    return None


def pool_replicas(states: Iterable[State], demand: int) -> int:
    """Rule 3: the pool's replica is wanted while any model has demand or is active or parked."""
    return 1 if demand > 0 or any(state != ABSENT for state in states) else 0


def unit_idle(idles: Sequence[float | None], unload_after_s: Sequence[float]) -> tuple[float | None, float]:
    """Rule 3 in the terms of the replica rules (``gateway.scaling.rules``: a unit idle for its keep-alive goes to
    its floor): the (idle-for, keep-alive) pair of a pool whose models each have their own unload threshold. The
    pool is idle for ``keep + s`` with ``keep`` the longest threshold and ``s`` the least slack ``idle - threshold``
    over its models, so it reaches its keep-alive exactly when every model has been idle for its own threshold.
    A model never unloaded (an infinite threshold) keeps the pool; models never used (idle None) do not count."""
    keep = max(unload_after_s)
    slacks = [idle - after for idle, after in zip(idles, unload_after_s, strict=True) if idle is not None]
    if not slacks:
        return None, keep
    if math.isinf(keep):
        return 0.0, keep
    return max(0.0, keep + min(slacks)), keep


@dataclass(frozen=True)
class Gap:
    """One idle gap of a model and the requests that arrived within ``wake_s`` / ``load_s`` of its end (the one
    that ended it included)."""

    idle_s: float
    waiting_wake: int
    waiting_load: int


@dataclass(frozen=True)
class Prices:
    wake_s: float
    load_s: float
    #: Device-seconds one request that meets a load is worth (``cold-start-cost``); one that meets a wake is worth
    #: ``wake_s / load_s`` of it.
    per_request_s: float
    host_price: float = HOST_PRICE

    @property
    def per_wake_request_s(self) -> float:
        return self.per_request_s * self.wake_s / self.load_s if self.load_s > 0 else 0.0


@dataclass(frozen=True)
class GapCost:
    device_s: float
    host_s: float
    wake_requests: int
    load_requests: int

    def total(self, prices: Prices) -> float:
        waiting = self.wake_requests * prices.per_wake_request_s + self.load_requests * prices.per_request_s
        return self.device_s + prices.host_price * self.host_s + waiting


def cost(gaps: Iterable[Gap], plan: Parking, prices: Prices) -> GapCost:
    """What ``plan`` costs over ``gaps`` (the table above)."""
    device = host = 0.0
    wakes = loads = 0
    p, u = plan.park_after_s, plan.idle_timeout_s
    for gap in gaps:
        if gap.idle_s < p:
            device += gap.idle_s
        elif gap.idle_s < u:
            device += p + prices.wake_s
            host += gap.idle_s - p
            wakes += gap.waiting_wake
        else:
            device += p + prices.load_s
            host += u - p
            loads += gap.waiting_load
    return GapCost(device, host, wakes, loads)


def decide(gaps: Sequence[Gap], prices: Prices, fixed: Parking, shortest_keep_s: float = 0.0) -> Parking:
    """The parking for a model with these recent gaps: the cheapest pair of candidate thresholds, or ``fixed``
    (while fewer than ``MIN_GAPS`` gaps were seen, or when nothing learned saves 5 % on them)."""
    if len(gaps) < MIN_GAPS:
        return _fixed(fixed, f"fixed: {len(gaps)} idle gaps seen, learning from {MIN_GAPS}")
    best_total, best = _cheapest(_Bins.of(gaps), prices, shortest_keep_s)
    fixed_total = cost(gaps, fixed, prices).total(prices)
    if best_total > MUST_SAVE * fixed_total:
        return _fixed(fixed, f"fixed: nothing learned from {len(gaps)} idle gaps saves 5 %")
    saved = 1 - best_total / fixed_total if fixed_total > 0 else 0.0
    reason = f"learned from {len(gaps)} idle gaps, {saved:.0%} cheaper than the fixed pair on them"
    return Parking(best.park_after_s, best.idle_timeout_s, learned=True, reason=reason)


def _fixed(plan: Parking, reason: str) -> Parking:
    return Parking(plan.park_after_s, plan.idle_timeout_s, learned=False, reason=reason)


#: The candidate thresholds: the adaptive keep-alive's histogram edges, then "never".
_CANDIDATES_S: tuple[float, ...] = (*EDGES_S, math.inf)


@dataclass(frozen=True)
class _Bins:
    """Prefix sums over the candidates: index ``i`` covers the gaps shorter than ``_CANDIDATES_S[i]``."""

    n: tuple[int, ...]
    idle_s: tuple[float, ...]
    wake: tuple[int, ...]
    load: tuple[int, ...]

    @classmethod
    def of(cls, gaps: Sequence[Gap]) -> _Bins:
        size = len(_CANDIDATES_S) + 1  # the last bin: gaps of at least every finite candidate
        n, idle, wake, load = [0] * size, [0.0] * size, [0] * size, [0] * size
        for gap in gaps:
            i = bisect.bisect_right(_CANDIDATES_S, gap.idle_s)  # the first candidate above the gap
            n[i] += 1
            idle[i] += gap.idle_s
            wake[i] += gap.waiting_wake
            load[i] += gap.waiting_load
        return cls(tuple(accumulate(n)), tuple(accumulate(idle)), tuple(accumulate(wake)), tuple(accumulate(load)))


def _cheapest(b: _Bins, prices: Prices, shortest: float) -> tuple[float, Parking]:
    """Every pair (P, U) of candidates with P <= U, in O(candidates^2) with the prefix sums. Longest first, so a
    tie goes to the longer threshold: two thresholds cost the same only when no recorded gap lies beyond the
    shorter, and a gap longer than any seen is no reason to unload a model that a burst of requests then waits on."""
    h, every = prices.host_price, len(_CANDIDATES_S)
    best_total, best = math.inf, Parking(math.inf, math.inf)
    for p in reversed(range(every)):
        park = _CANDIDATES_S[p]
        if park < shortest:
            continue
        below = b.idle_s[p]  # gaps shorter than P: paid in full, on the device
        for u in reversed(range(p, every)):
            unload = _CANDIDATES_S[u]
            mid_n, mid_s = b.n[u] - b.n[p], b.idle_s[u] - b.idle_s[p]
            middle = mid_n * (park + prices.wake_s) + h * (mid_s - mid_n * park) if mid_n else 0.0
            middle += (b.wake[u] - b.wake[p]) * prices.per_wake_request_s
            high_n = b.n[-1] - b.n[u]
            late = high_n * (park + prices.load_s + h * (unload - park)) if high_n else 0.0
            late += (b.load[-1] - b.load[u]) * prices.per_request_s
            total = below + middle + late
            if total < best_total:
                best_total, best = total, Parking(park, unload)
    return best_total, best


class ParkingLearner:
    """One model's idle gaps with the requests that arrived right after each, learned from its arrivals. Pure: the
    clock is passed in. A gap's counts are complete ``load_s`` after its end; until then it is not used."""

    def __init__(self, wake_s: float, load_s: float, window: int = WINDOW) -> None:
        self._wake_s, self._load_s = wake_s, load_s
        self._gaps: deque[Gap] = deque(maxlen=window)
        #: The gap whose counts are still open: (its end, its length, arrivals within wake_s, within load_s).
        self._open: tuple[float, float, int, int] | None = None
        self._cached: tuple[tuple[Prices, Parking, float, int], Parking] | None = None
        self._version = 0

    @property
    def gaps(self) -> tuple[Gap, ...]:
        return tuple(self._gaps)

    def add(self, gap: Gap) -> None:
        """A gap counted elsewhere (``LookedGaps``: from the autoscaler's looks)."""
        self._gaps.append(gap)
        self._version += 1

    def arrived(self, now_s: float, idle_since_s: float | None) -> None:
        """A request arrived; ``idle_since_s``: when the model became idle (nothing queued or in flight) before
        it, None if it was not idle."""
        self._close(now_s)
        if self._open is not None:
            end, idle, wake, load = self._open
            self._open = (end, idle, wake + (now_s < end + self._wake_s), load + 1)
        elif idle_since_s is not None and now_s - idle_since_s >= SHORTEST_GAP_S:
            self._open = (now_s, now_s - idle_since_s, 1, 1)

    def _close(self, now_s: float) -> None:
        if self._open is not None and now_s >= self._open[0] + self._load_s:
            _end, idle, wake, load = self._open
            self._gaps.append(Gap(idle, wake, load))
            self._open = None
            self._version += 1

    def decision(self, now_s: float, prices: Prices, fixed: Parking, shortest_keep_s: float = 0.0) -> Parking:
        """``decide`` on the gaps complete by ``now_s``, recomputed only when they (or its inputs) changed."""
        self._close(now_s)
        key = (prices, fixed, shortest_keep_s, self._version)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, decide(self.gaps, prices, fixed, shortest_keep_s))
        return self._cached[1]


class LookedGaps:
    """One model's gaps and the requests that waited at their end, as the autoscaler's looks show them (a live
    gateway does not see each arrival, as ``ParkingLearner.arrived`` does in ``loadtest simulate``). Pure: the
    clock is passed in.

    A gap ends at a look that finds the model busy again (``GapLearner.observe``: at most one look after the
    request that ended it). The requests that waited on a wake (a load) are estimated as the most requests queued
    or in flight at a look within ``wake_s`` (``load_s``) of that look, at least one: while a model wakes or loads
    none of them can finish, so the demand seen is the arrivals so far. The estimate is coarse by one look: with a
    wake shorter than the autoscaler's period only the first look counts, and it counts the requests that came
    within a period of the end, which leans towards keeping models active. The gap is handed to ``learner`` once
    ``load_s`` has passed since its end."""

    def __init__(self, learner: ParkingLearner) -> None:
        self._learner = learner
        self._finder = GapLearner(window=2)  # finds the gaps; the learner keeps them
        #: The gap whose counts are open: (its end, its length, most waiting within wake_s, within load_s).
        self._open: tuple[float, float, int, int] | None = None

    def observe(self, now_s: float, demand: int, idle_for_s: float | None, prices: Prices) -> None:
        if self._open is not None:
            end, idle, wake, load = self._open
            if now_s >= end + prices.load_s:
                self._close()
            else:
                wake = max(wake, demand) if now_s < end + prices.wake_s else wake
                self._open = (end, idle, wake, max(load, demand))
        ended = self._finder.observe(now_s, demand, idle_for_s)
        if ended is not None:
            self._close()  # a new gap within load_s of the last one's end: the last one's counts stop here
            waiting = max(1, demand)
            self._open = (now_s, ended, waiting, waiting)

    def due_s(self, now_s: float, prices: Prices) -> float | None:
        """Seconds until the open gap's counts want a look (its wake window's end, then its load window's), if a
        gap is open."""
        if self._open is None:
            return None
        end = self._open[0]
        at = end + prices.wake_s if now_s < end + prices.wake_s else end + prices.load_s
        return max(0.0, at - now_s)

    def _close(self) -> None:
        if self._open is not None:
            _end, idle, wake, load = self._open
            self._learner.add(Gap(idle, wake, load))
            self._open = None
