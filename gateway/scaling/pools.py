"""The three-state keep-alive of pool models, applied to live replicas: rules 1 and 2 of ``gateway.scaling.parking``.

A pool replica (``runtime/pool``) holds each of its models active, parked or absent. Once a model has been idle
(nothing queued or in flight, as the queue says for every gateway replica) for ``park-after`` it is parked on each
ready replica where it is active (``POST /v1/pool/park``), and once idle for ``idle-timeout`` it is unloaded where it
is active or parked (``POST /v1/pool/unload``). Demand brings it back: a batch wakes or loads it where it lands.
Rule 3 (the pool's replica goes to zero) stays with the autoscaler's replica rules for the unit, whose idle-timeout
is its first model's: set them alike so that the replica goes once its models are absent.

Cheap by construction: the autoscaler calls ``apply`` for the units it reads anyway; a model whose next change is
not due costs a few comparisons and nothing is sent. Where a model is held comes from what the gateway already
learned (``gateway.replicas.residency``: batch answers, ready reports, and each move's own answer); a replica not
heard of is left alone. A move is sent at most once at a time per (replica, model), on a task of its own, so a slow
park never holds the autoscaler's pass. A replica that answers 409 (the model is busy: another gateway's batch, or
the pool is making room) is asked again at a later pass, while the model is still idle. Only the scaling leader
moves models (the autoscaler calls ``apply`` there alone).

Fixed thresholds only: ``idle-policy = "adaptive"`` learns the replica's keep-alive as before, but ``park-after``
and the models' unloads follow the settings (the learned three-state choice, ``parking.decide``, needs each gap's
requests within a wake and a load of its end, which the autoscaler does not see).
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
from gateway.queue.stream import Load
from gateway.replicas.client import RuntimeClient, RuntimeFailed
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.parking import ABSENT, PARKED, Parking, State, next_change_s, next_state
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.scaling")

_PATHS: dict[State, str] = {PARKED: wire.POOL_PARK_PATH, ABSENT: wire.POOL_UNLOAD_PATH}


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


def moves_due(settings: ModelSettings, load: Load, holding: Mapping[str, State]) -> list[PoolMove]:
    """The moves due now for one model held where ``holding`` says (replica URL -> its state there)."""
    idle = load.idle_for_s
    if load.demand > 0 or idle is None:
        return []
    plan = plan_of(settings)
    moves = []
    for url, state in holding.items():
        change = next_change_s(state, plan)
        if change is not None and idle >= change and (to := next_state(state, 0, idle, plan)) != state:
            moves.append(PoolMove(url, settings.name, to))
    return moves


def next_due_s(settings: ModelSettings, load: Load, holding: Mapping[str, State]) -> float | None:
    """Seconds until the model's next change is due on any of its replicas, if it stays idle (0: due now; None: no
    change ahead, or the model is not idle)."""
    idle = load.idle_for_s
    if load.demand > 0 or idle is None:
        return None
    plan = plan_of(settings)
    changes = [change for state in holding.values() if (change := next_change_s(state, plan)) is not None]
    return max(0.0, min(changes) - idle) if changes else None


class PoolKeeper:
    """Sends the moves due (``moves_due``) to the ready replicas of the units the autoscaler reads, and says when a
    unit it does not read (at rest) has a move due (``due``)."""

    def __init__(
        self, *, endpoints: ReadyEndpoints, client: RuntimeClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._endpoints = endpoints
        self._client = client
        self._clock = clock
        #: The moves under way, one per (URL, model).
        self._moving: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: When each model with a change ahead is due (``clock`` time); a model with none is not here.
        self._due_at: dict[str, float] = {}

    def apply(self, unit: Sequence[ModelSettings], loads: Sequence[Load]) -> None:
        """One autoscaler pass over a unit: start the moves due, and note when the next one will be."""
        for settings, load in zip(unit, loads, strict=True):
            holding = self.holding(settings.name)
            for move in moves_due(settings, load, holding):
                self._start(move)
            due = next_due_s(settings, load, holding)
            if due is None:
                self._due_at.pop(settings.name, None)
            else:
                self._due_at[settings.name] = self._clock() + due

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
