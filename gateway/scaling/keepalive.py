"""The adaptive keep-alive (``idle-policy = "adaptive"``), as pure functions of a model's recent idle gaps.

After Shahrad et al., "Serverless in the Wild" (USENIX ATC '20): a fixed idle timeout is blind to a model's traffic;
a policy built from the histogram of the model's own idle gaps can keep a replica exactly as long as the next
request is likely to come, drop it when a long gap has begun, and start one again just before the expected end
of that gap (a *pre-warm*).

What is learned: an *idle gap* is the time from the end of all activity (nothing queued or in flight) to the next
request. ``GapLearner.observe`` sees the same (demand, idle-for) pairs the autoscaler feeds to
``policy.desired_replicas`` and notices a gap when it ends, without reading anything more. It keeps when the idle
period began, so the looks need not be regular: the autoscaler does not look at a model at rest until new work
wakes it (or its pre-warm is due), and the gap is then measured up to that look, less than one autoscaler period
after the request came. The last ``WINDOW``
gaps of at least ``SHORTEST_GAP_S`` are kept (the gateway keeps them in Redis as well, ``gateway.scaling.gaps``).

What is chosen (``decide``): the keep-alive ``K``, and optionally a pre-warm: a replica asked for again at
``W - cold start`` of idleness so that it is ready at ``W``, and dropped at ``Q`` if no request came. The choice
minimises, over the recorded gaps, replica-seconds + ``cold-start-cost`` x cold starts: the one tunable says how
many GPU-seconds one avoided cold start is worth. Gap by gap (cold start ``C``):

==================  ====================  ==========
gap ``g``           replica-seconds        cold start
==================  ====================  ==========
g < K               g                      no
K <= g < W          K + C                  yes
W <= g < Q          K + g - (W - C)        no
g >= Q              K + (Q - W + C) + C    yes
==================  ====================  ==========

(no pre-warm: W = Q = infinity). Candidate thresholds are the edges of a log-spaced histogram. The fixed
``idle-timeout`` stays in force (``KeepAlive.learned`` false) while there are fewer than ``MIN_GAPS`` gaps, and
when the learned choice is not clearly cheaper than the fixed timeout on those same gaps (no pattern to exploit).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.settings import ModelSettings

#: Gaps shorter than this are not recorded: a keep-alive is never shorter, so they cost the same under every
#: choice (and an autoscaler looking once a second cannot see much shorter ones).
SHORTEST_GAP_S = 2.0
#: How many recent gaps are kept (the sliding window). Older ones are forgotten, so a changed pattern is learned.
WINDOW = 256
#: Fewer gaps than this: the fixed idle timeout applies.
MIN_GAPS = 8
#: The learned choice must cost at most this share of the fixed timeout's cost on the same gaps to be used.
MUST_SAVE = 0.95
#: Edges of the histogram's bins, the candidate thresholds: log-spaced from SHORTEST_GAP_S to 4 h.
EDGES_S: tuple[float, ...] = tuple(SHORTEST_GAP_S * 1.3**i for i in range(math.ceil(math.log(7200) / math.log(1.3))))
#: Activity seen this much later than before counts as a new idle period (clock noise between ticks is smaller).
_NEW_PERIOD_S = 0.25


@dataclass(frozen=True)
class KeepAlive:
    """What to do once a model is idle."""

    #: Scale to ``min-replicas`` after this long idle.
    keep_s: float
    #: Ask for a replica again at this idle time (None: no pre-warm)...
    prewarm_at_s: float | None = None
    #: ...and give it up at this idle time if no request came.
    prewarm_until_s: float | None = None
    #: Whether this was learned (False: the fixed idle timeout, for ``reason``).
    learned: bool = False
    #: Why, for the log.
    reason: str = ""

    def prewarming(self, idle_for_s: float) -> bool:
        if self.prewarm_at_s is None or self.prewarm_until_s is None:
            return False
        return self.prewarm_at_s <= idle_for_s < self.prewarm_until_s

    def warm_after(self, gap_s: float, cold_start_s: float) -> bool:
        """Whether a request ending an idle gap of ``gap_s`` finds a ready replica under this keep-alive."""
        if gap_s < self.keep_s:
            return True
        if self.prewarm_at_s is None or self.prewarm_until_s is None:
            return False
        return self.prewarm_at_s + cold_start_s <= gap_s < self.prewarm_until_s

    def describe(self) -> str:
        text = f"keep {self.keep_s:.0f} s"
        if self.prewarm_at_s is not None:
            text += f", pre-warm at {self.prewarm_at_s:.0f} s idle until {self.prewarm_until_s:.0f} s"
        return f"{text} ({self.reason})"


def fixed(settings: ModelSettings, reason: str) -> KeepAlive:
    return KeepAlive(keep_s=settings.idle_timeout_s, reason=reason)


@dataclass(frozen=True)
class _Histogram:
    """Gap counts and sums per bin, as prefix sums: ``below_n[i]`` gaps (summing to ``below_s[i]``) are shorter
    than ``EDGES_S[i]``; index ``len(EDGES_S)`` covers everything."""

    below_n: tuple[int, ...]
    below_s: tuple[float, ...]

    @classmethod
    def of(cls, gaps: Sequence[float]) -> _Histogram:
        ordered = sorted(gaps)
        below_n, below_s, i, total = [], [], 0, 0.0
        for edge in (*EDGES_S, math.inf):
            while i < len(ordered) and ordered[i] < edge:
                total += ordered[i]
                i += 1
            below_n.append(i)
            below_s.append(total)
        return cls(tuple(below_n), tuple(below_s))


def cost(gaps: Iterable[float], keep_alive: KeepAlive, cold_start_s: float, cold_start_cost_s: float) -> float:
    """Replica-seconds + ``cold_start_cost_s`` x cold starts of ``keep_alive`` over ``gaps`` (the table above)."""
    total = 0.0
    k, c = keep_alive.keep_s, cold_start_s
    at, until = keep_alive.prewarm_at_s, keep_alive.prewarm_until_s
    for g in gaps:
        if g < k:
            total += g
        elif at is None or until is None or g < at + c:
            total += k + c + cold_start_cost_s
        elif g < until:
            total += k + g - at
        else:
            total += k + (until - at) + c + cold_start_cost_s
    return total


def decide(
    settings: ModelSettings, gaps: Sequence[float], cold_start_s: float | None, shortest_keep_s: float = 0.0
) -> KeepAlive:
    """The keep-alive for ``settings``' model, given its recent idle gaps and its typical cold start (None while
    none was measured: then no pre-warm, whose timing depends on it). ``shortest_keep_s``: the autoscaler's
    period, below which a keep-alive cannot be told apart."""
    if len(gaps) < MIN_GAPS:
        return fixed(settings, f"fixed idle-timeout: {len(gaps)} idle gaps seen, learning from {MIN_GAPS}")
    c = cold_start_s if cold_start_s is not None else 0.0
    price = settings.cold_start_cost_s
    learned = _cheapest(_Histogram.of(gaps), c, price, prewarm=cold_start_s is not None, shortest=shortest_keep_s)
    learned_cost = cost(gaps, learned, c, price)
    fixed_cost = cost(gaps, fixed(settings, ""), c, price)
    if learned_cost > MUST_SAVE * fixed_cost:
        unknown = "; no pre-warm before a cold start was measured" if cold_start_s is None else ""
        return fixed(settings, f"fixed idle-timeout: nothing learned from {len(gaps)} idle gaps saves 5 %{unknown}")
    saved = 1 - learned_cost / fixed_cost if fixed_cost > 0 else 0.0
    reason = f"learned from {len(gaps)} idle gaps, {saved:.0%} cheaper than idle-timeout on them"
    return KeepAlive(learned.keep_s, learned.prewarm_at_s, learned.prewarm_until_s, learned=True, reason=reason)


def _cheapest(h: _Histogram, c: float, price: float, *, prewarm: bool, shortest: float) -> KeepAlive:
    """The cheapest keep-alive; with a pre-warm only if that is clearly cheaper still (``MUST_SAVE``): a window
    fitted to a handful of long gaps would otherwise be chosen for what is noise, and missed next time."""
    plain_cost, plain = _cheapest_plain(h, c, price, shortest)
    if not prewarm:
        return plain
    found = _cheapest_prewarm(h, c, price, shortest, MUST_SAVE * plain_cost)
    return found if found is not None else plain


def _cheapest_plain(h: _Histogram, c: float, price: float, shortest: float) -> tuple[float, KeepAlive]:
    n_all = h.below_n[-1]
    best_cost, best = h.below_s[-1], KeepAlive(keep_s=math.inf)  # never drop: every gap is paid in full
    for k, keep in enumerate(EDGES_S):
        if keep < shortest:
            continue
        total = h.below_s[k] + (n_all - h.below_n[k]) * (keep + c + price)
        if total < best_cost:
            best_cost, best = total, KeepAlive(keep_s=keep)
    return best_cost, best


def _cheapest_prewarm(h: _Histogram, c: float, price: float, shortest: float, bar: float) -> KeepAlive | None:
    """Search every (K, W, Q) among the histogram's edges costing less than ``bar``, in O(edges^3) with prefix
    sums (~6,000 candidates)."""
    n_all, edges = h.below_n[-1], EDGES_S
    best_cost, best = bar, None
    for k, keep in enumerate(edges):
        if keep < shortest:
            continue
        for w in range(k + 1, len(edges)):
            ask = edges[w] - c
            if ask < keep + shortest:  # asking again before (or as) it was dropped: a longer keep-alive instead
                continue
            head = h.below_s[k] + (h.below_n[w] - h.below_n[k]) * (keep + c + price)
            if head >= best_cost:
                break  # grows with w
            for q in range(w + 1, len(edges) + 1):
                until = edges[q] if q < len(edges) else math.inf
                warm_n = h.below_n[q] - h.below_n[w]
                warm = (h.below_s[q] - h.below_s[w]) + warm_n * (keep - ask)
                late = (n_all - h.below_n[q]) * (keep + (until - ask) + c + price) if q < len(edges) else 0.0
                total = head + warm + late
                if total < best_cost:
                    best_cost, best = total, KeepAlive(keep, ask, until)
    return best


class GapLearner:
    """One model's idle gaps, learned from what the autoscaler sees at each look. Pure: the clock is passed in."""

    def __init__(self, window: int = WINDOW) -> None:
        self._gaps: deque[float] = deque(maxlen=window)
        #: Start of the current idle period, by the caller's clock (None: busy, or not looked at yet).
        self._idle_since: float | None = None
        self._cached: tuple[tuple[ModelSettings, float | None, float], KeepAlive] | None = None

    @property
    def gaps(self) -> tuple[float, ...]:
        return tuple(self._gaps)

    def add(self, gaps: Iterable[float]) -> None:
        """Gaps learned elsewhere (read back from Redis), older than those seen here."""
        mine = list(self._gaps)
        self._gaps.clear()
        self._gaps.extend([*(g for g in gaps if g >= SHORTEST_GAP_S), *mine])
        self._cached = None

    def observe(self, now_s: float, demand: int, idle_for_s: float | None) -> float | None:
        """One look at the model; returns the idle gap that ended since the last look, if one did (and was long
        enough to keep). A gap ends at this look if it finds demand, else at the activity that began a new idle
        period since the last look; either is at most one look's delay after the request that ended it."""
        before, ended = self._idle_since, None
        if demand > 0 or idle_for_s is None:
            self._idle_since = None
            ended = now_s - before if before is not None else None
        else:
            since = now_s - idle_for_s
            if before is None or since > before + _NEW_PERIOD_S:  # a new idle period (clock noise is smaller)
                self._idle_since = since
                ended = since - before if before is not None else None
        if ended is None or ended < SHORTEST_GAP_S:
            return None
        self._gaps.append(ended)
        self._cached = None
        return ended

    def decision(self, settings: ModelSettings, cold_start_s: float | None, shortest_keep_s: float = 0.0) -> KeepAlive:
        """``decide`` on the gaps so far, recomputed only when they (or its inputs) changed."""
        key = (settings, cold_start_s, shortest_keep_s)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, decide(settings, self.gaps, cold_start_s, shortest_keep_s))
        return self._cached[1]
