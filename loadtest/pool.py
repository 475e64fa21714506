"""``simulate --pool``: the models of a trace sharing ONE pool replica, under the three-state keep-alive
(``gateway.scaling.parking``, the pure rules), on a virtual clock.

Mechanics around the rules (what ``runtime/pool`` and a pool Deployment would do):

- the pool replica is asked for when a request finds it at zero and is ready ``cold_start_s`` later; it is given
  back when every model is absent and none has demand (``pool_replicas``);
- a request for a model that is not active makes it active: a parked model is woken (``wake_s``), an absent one
  loaded (``load_s``; a model loaded while the replica itself starts is ready when both are done);
- at most ``device_models`` models are active at once: making one more active first parks the least recently used
  active model with nothing queued or in flight; if every active model has work, the request waits until one
  settles. At most ``host_models`` are parked: parking one more unloads the least recently used parked model;
- an active model runs one batch at a time, as a replica of its own would (up to ``max_batch_size`` queued
  requests, ``seconds_per_token`` x the longest completion): the GPU's compute is assumed to suffice for the
  active models' batches, only its memory is shared;
- an idle model's state is re-examined at the autoscaler tick when the rules say it next changes
  (``next_change_s``), not at every tick: an idle model costs nothing until then.

A request *meets a load* (a cold start) if its model was absent or loading when it arrived, or the replica was at
zero or starting; it *meets a wake* if its model was parked or waking. The learned variant's learner sees every
arrival and when the model became idle before it (``ParkingLearner``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.scaling.parking import (
    ABSENT,
    ACTIVE,
    HOST_PRICE,
    PARKED,
    Parking,
    ParkingLearner,
    Prices,
    State,
    next_change_s,
    next_state,
    pool_replicas,
)
from loadtest.results import PolicyResult, PoolFigures
from loadtest.trace import TraceRequest

__all__ = ["PoolPolicy", "PoolSettings", "pool_policies", "simulate_pool"]

_FINISH, _READY, _ARRIVAL, _CHECK = range(4)  # event kinds, in the order they are handled at the same instant
Met = Literal["warm", "wake", "load"]


@dataclass(frozen=True)
class PoolSettings:
    #: From asking for the pool replica to its being ready (process, engine, first model).
    cold_start_s: float = 20.0
    #: A parked model's weights back on the device.
    wake_s: float = 1.0
    #: An absent model loaded into a running pool replica (from the node's disk cache).
    load_s: float = 20.0
    #: How many models may be active (on the device) at once.
    device_models: int = 4
    #: How many may be parked (in host memory) at once; None: all of them.
    host_models: int | None = None
    host_price: float = HOST_PRICE
    #: The autoscaler's period: state changes of idle models happen on its ticks.
    scale_interval_s: float = 1.0
    seconds_per_token: float = 0.02
    max_batch_size: int = 16
    #: End of the measured window; None: the last arrival.
    horizon_s: float | None = None


@dataclass(frozen=True)
class PoolPolicy:
    name: str
    park_after_s: float
    idle_timeout_s: float
    #: Set: learned (``gateway.scaling.parking.decide``) at this ``cold-start-cost`` per waiting request, with the
    #: pair above as its fallback while it learns.
    cold_start_cost_s: float | None = None

    @property
    def fixed(self) -> Parking:
        return Parking(self.park_after_s, self.idle_timeout_s)


def pool_policies(
    park_afters_s: Sequence[float],
    idle_timeouts_s: Sequence[float],
    costs_s: Sequence[float],
    wake_s: float,
    load_s: float,
) -> list[PoolPolicy]:
    """Every fixed pair with park-after <= idle-timeout, then the learned variant at each cost, whose fallback
    pair is (``cost x wake / load``, ``cost``): what one gap pays, held on the device or in host memory, for as much
    as one request waiting on a wake, or on a load, is worth."""
    pairs = [(p, u) for u in idle_timeouts_s for p in park_afters_s if p <= u]
    fixed = [PoolPolicy(f"pool {_s(p)}/{_s(u)}", p, u) for p, u in pairs]
    learned = []
    for c in costs_s:
        park = min(c, c * wake_s / load_s if load_s > 0 else c)
        learned.append(PoolPolicy(f"pool learned {_s(c)}", park, c, cold_start_cost_s=c))
    return fixed + learned


def _s(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}s"


#: The figures a pool run adds up.
_COUNTS: tuple[str, ...] = (
    "replica_seconds",
    "device_model_seconds",
    "host_memory_seconds",
    "load_requests",
    "wake_requests",
    "load_wait_s",
    "wake_wait_s",
    "replica_starts",
    "loads",
    "wakes",
    "parks",
    "unloads",
)


@dataclass
class _Model:
    name: str
    learner: ParkingLearner | None
    state: State = ABSENT
    #: When it is usable on the device (state active); in the future while it is woken or loaded.
    ready_at: float = math.inf
    coming: Met = "warm"
    #: Waits for a device slot (every active model had work).
    pending: bool = False
    busy: bool = False
    queue: deque[tuple[float, float, Met]] = field(default_factory=deque)
    in_flight: int = 0
    #: When it last became idle (nothing queued or in flight); None while it has work or was never seen.
    idle_since: float | None = None
    last_used: float = -math.inf
    state_since: float = 0.0

    @property
    def demand(self) -> int:
        return len(self.queue) + self.in_flight


@dataclass
class _PoolRun:
    policy: PoolPolicy
    sim: PoolSettings
    requests: Sequence[TraceRequest]
    start_s: float
    horizon_s: float
    models: dict[str, _Model] = field(default_factory=dict)
    now: float = 0.0
    replica_up: bool = False
    replica_ready_at: float = math.inf
    figures: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0.0))
    waits: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 0)])
    _events: list[tuple[float, int, int, Any]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def run(self) -> None:
        learned = self.policy.cold_start_cost_s is not None
        for name in sorted({r.model for r in self.requests}):
            learner = ParkingLearner(self.sim.wake_s, self.sim.load_s) if learned else None
            self.models[name] = _Model(name, learner)
        for request in self.requests:
            self._at(request.at_s, _ARRIVAL, request)
        while self._events and (self._events[0][0] <= self.horizon_s or len(self.waits) < len(self.requests)):
            at, kind, _seq, payload = heapq.heappop(self._events)
            self._advance(at)
            self._handle(kind, payload)
        self._advance(self.horizon_s)
        self.timeline = [(t, n) for t, n in self.timeline if t <= self.horizon_s] + [
            (self.horizon_s, int(self.replica_up))
        ]

    def _at(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._events, (at, kind, next(self._seq), payload))

    def _window(self, since: float, to: float) -> float:
        return max(0.0, min(max(to, self.start_s), self.horizon_s) - min(max(since, self.start_s), self.horizon_s))

    def _advance(self, to: float) -> None:
        self.figures["replica_seconds"] += self.replica_up * self._window(self.now, to)
        self.now = to

    def _handle(self, kind: int, payload: Any) -> None:
        if kind == _ARRIVAL:
            self._arrive(payload)
        elif kind == _FINISH:
            self._finish(*payload)
        elif kind == _CHECK:
            self._check(*payload)
        else:
            self._dispatch(payload)

    # arrivals and the way up: replica, device slot, wake or load

    def _arrive(self, request: TraceRequest) -> None:
        model = self.models[request.model]
        if model.learner is not None:
            model.learner.arrived(self.now, model.idle_since)
        met = self._met(model)
        self.figures["load_requests"] += met == "load"
        self.figures["wake_requests"] += met == "wake"
        service = max(1, request.output_tokens) * self.sim.seconds_per_token
        model.queue.append((self.now, service, met))
        model.idle_since = None
        if not self.replica_up:
            self._set_replica(up=True)
            self.replica_ready_at = self.now + self.sim.cold_start_s
            self.figures["replica_starts"] += 1
        if model.state != ACTIVE and not model.pending:
            self._activate(model)
        self._dispatch(model)

    def _met(self, model: _Model) -> Met:
        if not self.replica_up or self.replica_ready_at > self.now:
            return "load"
        if model.state == ACTIVE:
            return "warm" if model.ready_at <= self.now else model.coming
        return "wake" if model.state == PARKED else "load"

    def _activate(self, model: _Model) -> None:
        if self._active_count() >= self.sim.device_models and not self._park_one():
            model.pending = True
            return
        model.pending = False
        coming: Met = "wake" if model.state == PARKED else "load"
        took = self.sim.wake_s if coming == "wake" else self.sim.load_s
        self.figures["wakes" if coming == "wake" else "loads"] += 1
        self._set_state(model, ACTIVE)
        model.coming = coming
        model.ready_at = max(self.now + took, self.replica_ready_at)
        self._at(model.ready_at, _READY, model)

    def _active_count(self) -> int:
        return sum(m.state == ACTIVE for m in self.models.values())

    def _park_one(self) -> bool:
        """The device budget: park the least recently used active model with no work (False: none has none)."""
        idle = [m for m in self.models.values() if m.state == ACTIVE and m.demand == 0 and m.ready_at <= self.now]
        if not idle:
            return False
        self._park(min(idle, key=lambda m: m.last_used))
        return True

    def _park(self, model: _Model) -> None:
        parked = [m for m in self.models.values() if m.state == PARKED]
        if self.sim.host_models is not None and len(parked) >= self.sim.host_models:
            if self.sim.host_models == 0:
                self._set_state(model, ABSENT)
                return
            self._set_state(min(parked, key=lambda m: m.last_used), ABSENT)
        self._set_state(model, PARKED)

    def _set_state(self, model: _Model, state: State) -> None:
        if state == model.state:
            return
        held = self._window(model.state_since, self.now)
        if model.state == ACTIVE:
            self.figures["device_model_seconds"] += held
        elif model.state == PARKED:
            self.figures["host_memory_seconds"] += held
        self.figures["parks"] += state == PARKED
        self.figures["unloads"] += state == ABSENT
        model.state, model.state_since = state, self.now
        if state != ACTIVE:
            model.ready_at = math.inf

    def _set_replica(self, *, up: bool) -> None:
        self.replica_up = up
        self.timeline.append((self.now, int(up)))
        if not up:
            self.replica_ready_at = math.inf

    # serving

    def _dispatch(self, model: _Model) -> None:
        ready = model.state == ACTIVE and model.ready_at <= self.now and self.replica_ready_at <= self.now
        if not ready or model.busy or not model.queue:
            return
        size = min(len(model.queue), self.sim.max_batch_size)
        batch = [model.queue.popleft() for _ in range(size)]
        for arrived, _service, met in batch:
            self.waits.append(self.now - arrived)
            if met != "warm":
                self.figures[f"{met}_wait_s"] += self.now - arrived
        model.busy, model.in_flight = True, model.in_flight + size
        model.last_used = self.now
        self._at(self.now + max(service for _a, service, _m in batch), _FINISH, (model, size))

    def _finish(self, model: _Model, size: int) -> None:
        model.busy, model.in_flight = False, model.in_flight - size
        model.last_used = self.now
        if model.demand > 0:
            self._dispatch(model)
            return
        model.idle_since = self.now
        self._plan_check(model)
        self._grant_pending()

    def _grant_pending(self) -> None:
        """Models waiting for a device slot, in the order they asked: one may be free now."""
        for waiting in [m for m in self.models.values() if m.pending]:
            self._activate(waiting)
            self._dispatch(waiting)

    # the idle rules

    def _plan(self, model: _Model) -> Parking:
        if model.learner is None or self.policy.cold_start_cost_s is None:
            return self.policy.fixed
        prices = Prices(self.sim.wake_s, self.sim.load_s, self.policy.cold_start_cost_s, self.sim.host_price)
        return model.learner.decision(self.now, prices, self.policy.fixed, self.sim.scale_interval_s)

    def _plan_check(self, model: _Model) -> None:
        """Look at an idle model again at the first tick when the rules say its state changes."""
        change = next_change_s(model.state, self._plan(model))
        if change is None or model.idle_since is None:
            return
        tick = self.sim.scale_interval_s
        at = max(self.now, math.ceil((model.idle_since + change) / tick) * tick)
        self._at(at, _CHECK, (model, model.idle_since))

    def _check(self, model: _Model, idle_since: float) -> None:
        if model.idle_since != idle_since:  # it had work since: a new idle period, with its own check
            return
        state = next_state(model.state, model.demand, self.now - idle_since, self._plan(model))
        if state == PARKED and model.state == ACTIVE:
            self._park(model)
        elif state != model.state:
            self._set_state(model, state)
        self._plan_check(model)
        self._grant_pending()
        demand = sum(m.demand for m in self.models.values())
        if self.replica_up and pool_replicas((m.state for m in self.models.values()), demand) == 0:
            self._set_replica(up=False)

    def finish_accounting(self) -> None:
        for model in self.models.values():
            held = self._window(model.state_since, self.horizon_s)
            if model.state == ACTIVE:
                self.figures["device_model_seconds"] += held
            elif model.state == PARKED:
                self.figures["host_memory_seconds"] += held


def simulate_pool(trace: Sequence[TraceRequest], policy: PoolPolicy, sim: PoolSettings) -> PolicyResult:
    """Run ``policy`` over ``trace``, every model in one pool replica."""
    horizon = sim.horizon_s if sim.horizon_s is not None else max((r.at_s for r in trace), default=0.0)
    start = min((r.at_s for r in trace), default=0.0)
    run = _PoolRun(policy, sim, trace, start, horizon)
    run.run()
    run.finish_accounting()
    f = run.figures
    pool = PoolFigures(
        park_after_s=policy.park_after_s,
        device_model_seconds=f["device_model_seconds"],
        host_memory_seconds=f["host_memory_seconds"],
        wake_requests=int(f["wake_requests"]),
        wake_wait_s=f["wake_wait_s"],
        replica_starts=int(f["replica_starts"]),
        loads=int(f["loads"]),
        wakes=int(f["wakes"]),
        parks=int(f["parks"]),
        unloads=int(f["unloads"]),
    )
    return PolicyResult(
        name=policy.name,
        min_replicas=0,
        idle_timeout_s=policy.idle_timeout_s,
        replica_seconds=f["replica_seconds"],
        cold_start_requests=int(f["load_requests"]),
        cold_starts=int(f["loads"]),
        requests=len(trace),
        waits_s=run.waits,
        timeline=run.timeline,
        cold_start_cost_s=policy.cold_start_cost_s,
        cold_start_wait_s=f["load_wait_s"],
        max_replicas=1,
        pool=pool,
    )
