"""The three-state keep-alive of pool models, applied to live replicas: rules 1 and 2 of ``gateway.scaling.parking``.

A pool replica (``runtime/pool``) holds each of its models active, parked or absent. Once a model has been idle
(nothing queued or in flight, as the queue says for every gateway replica) for ``park-after`` it is parked on each
ready replica where it is active (``POST /v1/pool/park``), and once idle for ``idle-timeout`` it is unloaded where it
is active or parked (``POST /v1/pool/unload``). Demand brings it back: a batch wakes or loads it where it lands.
Rule 3 (the pool's replica goes to zero once every model is absent) is the autoscaler's: ``unload_after_s`` says
when each model is unloaded, and ``parking.unit_idle`` turns that into the unit's replica rules.

Cheap by construction: the autoscaler calls ``apply`` for the units it reads anyway; a model whose next change is
not due costs a few comparisons and nothing is sent. Where a model is held comes from what the gateway already
learned (``gateway.replicas.residency``: batch answers, ready reports, and each move's own answer); a replica not
heard of is left alone. A move is sent at most once at a time per (replica, model), on a task of its own, so a slow
park never holds the autoscaler's pass. A replica that answers 409 (the model is busy: another gateway's batch, or
the pool is making room) is asked again at a later pass, while the model is still idle. Only the scaling leader
moves models (the autoscaler calls ``apply`` there alone).

With ``idle-policy = "adaptive"`` the pair is learned (``parking.decide``) from the model's recent idle gaps and
the requests that waited at their end, as the autoscaler's looks show them (``parking.LookedGaps``), priced with
the model's own wake and load seconds (the replicas' reports: ``PoolModel.wake_s / wakes``; before any, the
typical cold start for a load and ``DEFAULT_WAKE_S``) and its ``cold-start-cost``; the fixed pair applies until
``keepalive.MIN_GAPS`` gaps were seen. The gaps live in the leader's memory: a new leader learns again.

A model the leader believes held nowhere active (another gateway replica's batch woke it there, unseen) would never
be parked: once per idle period, when its park is due, the ready replicas' reports are read again
(``PoolReports.refresh``), and the next pass parks it where it is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import wire
from gateway.metrics import Metrics
from gateway.queue.stream import Load
from gateway.replicas.client import RuntimeClient, RuntimeFailed
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.replicas.poolreports import PoolReports
from gateway.scaling.parking import (
    ABSENT,
    ACTIVE,
    PARKED,
    LookedGaps,
    Parking,
    ParkingLearner,
    Prices,
    State,
    next_change_s,
    next_state,
)
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.scaling")

_PATHS: dict[State, str] = {PARKED: wire.POOL_PARK_PATH, ABSENT: wire.POOL_UNLOAD_PATH}

#: A wake's seconds before a replica reported one: a wake copies the weights back (well under a second on a GPU for
#: a model that fits one; see ``loadtest gpu``).
DEFAULT_WAKE_S = 1.0
#: A load's seconds before a replica reported one and while no cold start of the model was measured.
DEFAULT_LOAD_S = 20.0
#: Activity seen this much later than an idle period's start begins a new idle period (as ``keepalive``).
_NEW_PERIOD_S = 0.25


def plan_of(settings: ModelSettings) -> Parking:
    """A model's fixed pair: parked after ``park-after``, absent after ``idle-timeout`` (a park-after at or above
    the idle-timeout: never parked)."""
    idle = settings.idle_timeout_s
    return Parking(min(settings.park_after_s, idle), idle, reason="fixed")


@dataclass(frozen=True)
class PoolMove:
    """Take ``model`` on the replica at ``url`` to ``to`` (parked or absent)."""

    url: str
    model: str
    to: State


def moves_due(
    settings: ModelSettings, load: Load, holding: Mapping[str, State], plan: Parking | None = None
) -> list[PoolMove]:
    """The moves due now for one model held where ``holding`` says (replica URL -> its state there), under ``plan``
    (default: the fixed pair, ``plan_of``)."""
    idle = load.idle_for_s
    if load.demand > 0 or idle is None:
        return []
    plan = plan or plan_of(settings)
    moves = []
    for url, state in holding.items():
        change = next_change_s(state, plan)
        if change is not None and idle >= change and (to := next_state(state, 0, idle, plan)) != state:
            moves.append(PoolMove(url, settings.name, to))
    return moves


def next_due_s(
    settings: ModelSettings, load: Load, holding: Mapping[str, State], plan: Parking | None = None
) -> float | None:
    """Seconds until the model's next change is due on any of its replicas, if it stays idle (0: due now; None: no
    change ahead, or the model is not idle)."""
    idle = load.idle_for_s
    if load.demand > 0 or idle is None:
        return None
    plan = plan or plan_of(settings)
    changes = [change for state in holding.values() if (change := next_change_s(state, plan)) is not None]
    return max(0.0, min(changes) - idle) if changes else None


@dataclass
class _Learned:
    """One adaptive model's learning: its gaps (``learner``, fed by ``looks``) and the pair in force."""

    learner: ParkingLearner
    looks: LookedGaps
    plan: Parking | None = None


class PoolKeeper:
    """Sends the moves due (``moves_due``) to the ready replicas of the units the autoscaler reads, and says when a
    unit it does not read (at rest) has a move due (``due``)."""

    def __init__(
        self,
        *,
        endpoints: ReadyEndpoints,
        client: RuntimeClient,
        reports: PoolReports | None = None,
        metrics: Metrics | None = None,
        cold_start_s: Callable[[str], float | None] = lambda _model: None,
        shortest_park_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``reports``: read again for a model believed held nowhere active once its park is due; ``cold_start_s``:
        a model's typical cold start (a load's price until a replica reported one); ``shortest_park_s``: no learned
        threshold below this (the autoscaler's period)."""
        self._endpoints = endpoints
        self._client = client
        self._reports = reports
        self._metrics = metrics
        self._cold_start_s = cold_start_s
        self._shortest_park_s = shortest_park_s
        self._clock = clock
        #: The moves under way, one per (URL, model).
        self._moving: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: When each model with a change ahead is due (``clock`` time); a model with none is not here.
        self._due_at: dict[str, float] = {}
        self._learned: dict[str, _Learned] = {}
        #: The idle period (its start, by ``clock``) in which a model's replicas were read again (``_look_around``).
        self._refreshed: dict[str, float] = {}

    def apply(self, unit: Sequence[ModelSettings], loads: Sequence[Load]) -> None:
        """One autoscaler pass over a unit's pool models: learn from the look, start the moves due, and note when
        the next one will be."""
        for settings, load in zip(unit, loads, strict=True):
            name, plan = settings.name, self.plan(settings, load)
            holding = self.holding(name)
            for move in moves_due(settings, load, holding, plan):
                self._start(move)
            dues = [next_due_s(settings, load, holding, plan), self._look_around(settings, load, holding, plan)]
            if (learned := self._learned.get(name)) is not None:
                dues.append(learned.looks.due_s(self._clock(), self._prices(settings)))
            if (due := min((d for d in dues if d is not None), default=None)) is None:
                self._due_at.pop(name, None)
            else:
                self._due_at[name] = self._clock() + due

    def plan(self, settings: ModelSettings, load: Load | None = None) -> Parking:
        """The pair in force for ``settings``' model: learned (``idle-policy = "adaptive"``, from ``load`` and the
        looks before) or fixed."""
        fixed = plan_of(settings)
        if settings.idle_policy != "adaptive":
            return fixed
        learned = self._learned.get(settings.name)
        if learned is None:
            learner = ParkingLearner(DEFAULT_WAKE_S, DEFAULT_LOAD_S)
            learned = self._learned[settings.name] = _Learned(learner, LookedGaps(learner))
        now, prices = self._clock(), self._prices(settings)
        if load is not None:
            learned.looks.observe(now, load.demand, load.idle_for_s, prices)
        plan = learned.learner.decision(now, prices, fixed, self._shortest_park_s)
        if plan != learned.plan:
            if learned.plan is None or learned.plan.describe() != plan.describe():
                log.info("parking of %s: %s", settings.name, plan.describe())
            learned.plan = plan
            self._publish(settings.name, plan)
        return plan

    def unload_after_s(self, settings: ModelSettings) -> float:
        """When ``settings``' idle model is unloaded everywhere under the pair in force (rule 3 of the pool's
        replica: ``parking.unit_idle``)."""
        return self.plan(settings).idle_timeout_s

    def _prices(self, settings: ModelSettings) -> Prices:
        """What a wake and a load of the model take (its replicas' reports, else the defaults), and what a
        request waiting on a load is worth."""
        wake_s, load_s = self._move_seconds(settings.name)
        if load_s is None:
            load_s = self._cold_start_s(settings.name) or DEFAULT_LOAD_S
        return Prices(wake_s=wake_s or DEFAULT_WAKE_S, load_s=load_s, per_request_s=settings.cold_start_cost_s)

    def _move_seconds(self, model: str) -> tuple[float | None, float | None]:
        """The model's mean wake and load seconds over the replicas' reports (None: none reported)."""
        wakes = wake_s = loads = load_s = 0.0
        for _url, _residency, report in self._endpoints.residency.replicas():
            held = report.models.get(model) if report is not None else None
            if held is not None:
                wakes, wake_s, loads, load_s = (
                    wakes + held.wakes,
                    wake_s + held.wake_s,
                    loads + held.loads,
                    load_s + held.load_s,
                )
        return (wake_s / wakes if wakes else None), (load_s / loads if loads else None)

    def _publish(self, model: str, plan: Parking) -> None:
        if self._metrics is None:
            return
        gauge = self._metrics.keep_alive_seconds
        gauge.labels(model, "park_after").set(plan.park_after_s)
        gauge.labels(model, "unload_after").set(plan.idle_timeout_s)
        self._metrics.keep_alive_learned.labels(model).set(1.0 if plan.learned else 0.0)

    def _look_around(
        self, settings: ModelSettings, load: Load, holding: Mapping[str, State], plan: Parking
    ) -> float | None:
        """A model believed active nowhere may be active where another gateway's batch took it: once per idle
        period, when its park is due, its replicas' reports are read again. Returns the seconds until this wants
        a look (its park, or the reports read meanwhile), or None."""
        idle, name = load.idle_for_s, settings.name
        if self._reports is None or load.demand > 0 or idle is None or ACTIVE in holding.values():
            return None
        since = self._clock() - idle
        if since <= self._refreshed.get(name, -math.inf) + _NEW_PERIOD_S:
            return None  # read already in this idle period
        if idle < plan.park_after_s:
            return plan.park_after_s - idle if math.isfinite(plan.park_after_s) else None
        self._refreshed[name] = since
        urls = self._endpoints.get(name)
        for url in urls:
            self._reports.refresh(url)
        return 1.0 if urls else None

    def due(self, unit: Sequence[ModelSettings]) -> bool:
        """Whether a model of the unit has a change due by now (the autoscaler then reads the unit)."""
        now = self._clock()
        return any(self._due_at.get(m.name, math.inf) <= now for m in unit)

    def holding(self, model: str) -> dict[str, State]:
        """The ready replicas known to hold ``model`` active or parked, and its state on each."""
        residency = self._endpoints.residency
        states = {url: residency.state(url, model) for url in self._endpoints.get(model)}
        return {url: state for url, state in states.items() if state is not None and state != ABSENT}

    def _start(self, move: PoolMove) -> None:
        key = (move.url, move.model)
        if key in self._moving:
            return
        task = asyncio.create_task(self._send(move), name=f"pool-{move.to}-{move.model}")
        self._moving[key] = task
        task.add_done_callback(lambda _task: self._moving.pop(key, None))

    async def _send(self, move: PoolMove) -> None:
        body = wire.PoolMoveRequest(model=move.model).model_dump_json()
        try:
            async with self._client.stream(move.url + _PATHS[move.to], body) as answer:
                if answer.status != 200:
                    level = logging.INFO if answer.status == 409 else logging.WARNING
                    log.log(level, "%s of %s on %s: %d %s", move.to, move.model, move.url, answer.status,
                            (await answer.text())[:200])  # fmt: skip
                    return
                residency = wire.Residency.from_headers(answer.headers)
        except RuntimeFailed as exc:
            log.warning("%s of %s on %s failed: %s", move.to, move.model, move.url, exc)
            return
        log.info("pool model %s is %s on %s (idle)", move.model, move.to, move.url)
        if residency is not None and move.url in self._endpoints.get(move.model):
            self._endpoints.residency.learn(move.model, move.url, residency)

    async def close(self) -> None:
        tasks = list(self._moving.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
