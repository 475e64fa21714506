"""``python -m loadtest simulate``: what a scaling policy costs and what it saves, on a virtual clock.

The trace is fed through the gateway's OWN scaling rules (``gateway.scaling.rules.desired_replicas``, the function its
autoscaler calls), with the gateway's mechanics around them:

- on arrival, a model with no replica wanted gets one at once (the request path's scale-from-zero);
- every ``--scale-interval`` the autoscaler asks the policy, with demand = queued + in flight and idleness = time
  since the last arrival or completion, and adds replicas or removes the newest ones;
- a replica is ready ``--cold-start`` seconds after it was asked for; a ready replica runs one batch at a time
  (up to ``max_batch_size`` queued requests, oldest first), which lasts as long as its longest request:
  ``--seconds-per-token`` x completion tokens.

Each idle timeout is compared with an always-on replica (``min_replicas = 1``, warm from the start) over the same
window, from the first arrival to the last (or ``--horizon``). A replica costs from the moment it is asked for
(a GPU is held while it starts) until it is removed. A request *hits a cold start* if its model had no ready
replica when it arrived, the same rule ``replay`` uses.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends import Replicas
from gateway.scaling.keepalive import GapLearner
from gateway.scaling.rules import desired_replicas
from gateway.settings import ModelSettings, parse_duration_s
from loadtest.pareto import beaten_by, beats, frontier_gap, is_fixed
from loadtest.report import Table, finish
from loadtest.results import PolicyResult
from loadtest.stats import mean, percentile
from loadtest.trace import TraceRequest, add_trace_arguments, spread, trace_from_args

__all__ = ["Policy", "SimulationSettings", "add_arguments", "run", "simulate"]

_FINISH, _READY, _ARRIVAL, _TICK = range(4)  # event kinds, in the order they are handled at the same instant


@dataclass(frozen=True)
class SimulationSettings:
    #: From asking for a replica to its being ready.
    cold_start_s: float = 20.0
    #: The autoscaler's period (KALTSTART_SCALE_INTERVAL).
    scale_interval_s: float = 1.0
    #: Generation time per completion token of a request (a batch lasts as long as its longest request).
    seconds_per_token: float = 0.02
    #: End of the measured window; None: the last arrival.
    horizon_s: float | None = None
    max_replicas: int = 1
    max_batch_size: int = 16


@dataclass(frozen=True)
class Policy:
    name: str
    min_replicas: int
    #: None: always on (the gateway's default idle timeout applies, which only matters above min_replicas).
    idle_timeout_s: float | None
    #: Set: ``idle-policy = "adaptive"`` with this ``cold-start-cost`` (``idle_timeout_s`` is its fallback).
    cold_start_cost_s: float | None = None


@dataclass
class _Replica:
    ready_at: float
    busy: bool = False


@dataclass
class _ModelRun:
    """One model under one policy; ``run`` returns its figures."""

    settings: ModelSettings
    sim: SimulationSettings
    requests: Sequence[TraceRequest]
    horizon_s: float
    replicas: list[_Replica] = field(default_factory=list)
    queue: deque[tuple[float, float]] = field(default_factory=deque)
    in_flight: int = 0
    activity: float | None = None
    now: float = 0.0
    replica_seconds: float = 0.0
    cold_requests: int = 0
    cold_starts: int = 0
    prewarms: int = 0
    learner: GapLearner | None = None
    waits: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    _events: list[tuple[float, int, int, Any]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def run(self) -> None:
        self.replicas = [_Replica(ready_at=float("-inf")) for _ in range(self.settings.min_replicas)]
        self.timeline.append((0.0, len(self.replicas)))
        for request in self.requests:
            self._at(request.at_s, _ARRIVAL, request)
        self._at(0.0, _TICK, None)
        while self._events and (self._events[0][0] <= self.horizon_s or len(self.waits) < len(self.requests)):
            at, kind, _seq, payload = heapq.heappop(self._events)
            self._advance(at)
            self._handle(kind, payload)
            self._dispatch()
        self._advance(self.horizon_s)
        self.timeline = [(t, count) for t, count in self.timeline if t <= self.horizon_s]
        self.timeline.append((self.horizon_s, self.timeline[-1][1]))

    def _at(self, at: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._events, (at, kind, next(self._seq), payload))

    def _advance(self, to: float) -> None:
        """Move the clock; replicas are paid for up to the horizon only (later events just finish the waits)."""
        self.replica_seconds += len(self.replicas) * max(0.0, min(to, self.horizon_s) - min(self.now, self.horizon_s))
        self.now = to

    def _handle(self, kind: int, payload: Any) -> None:
        if kind == _ARRIVAL:
            self._arrive(payload)
        elif kind == _TICK:
            self._tick()
        elif kind == _FINISH:
            replica, size = payload
            replica.busy = False
            self.in_flight -= size
            self.activity = self.now  # a settle counts as activity
        # _READY needs no handling: readiness is ``ready_at <= now``; the event only makes _dispatch run then.

    @property
    def _ready(self) -> int:
        return sum(r.ready_at <= self.now for r in self.replicas)

    def _arrive(self, request: TraceRequest) -> None:
        self.activity = self.now
        service = max(1, request.output_tokens) * self.sim.seconds_per_token
        self.queue.append((self.now, service))
        self.cold_requests += self._ready == 0
        if not self.replicas:  # Scaler.ensure_capacity: scale from zero on the request path
            self._resize(1)

    def _tick(self) -> None:
        if self.activity is None:  # the gateway starts counting idleness when it first sees a model
            self.activity = self.now
        now = Replicas(desired=len(self.replicas), ready=self._ready)
        demand, idle_for = len(self.queue) + self.in_flight, self.now - self.activity
        keep_alive = None
        if self.learner is not None:  # what Scaler does through gateway.scaling.gaps, minus Redis
            self.learner.observe(self.now, demand, idle_for)
            keep_alive = self.learner.decision(self.settings, self.sim.cold_start_s, self.sim.scale_interval_s)
        wanted = desired_replicas(self.settings, demand, idle_for, now, keep_alive)
        if wanted != now.desired:
            self.prewarms += demand == 0 and now.desired == 0
            self._resize(wanted)
        self._at(self.now + self.sim.scale_interval_s, _TICK, None)

    def _resize(self, count: int) -> None:
        if not self.replicas and count > 0:
            self.cold_starts += 1
        while len(self.replicas) < count:
            replica = _Replica(ready_at=self.now + self.sim.cold_start_s)
            self.replicas.append(replica)
            self._at(replica.ready_at, _READY, None)
        del self.replicas[count:]  # the newest go first, as the local backend does
        self.timeline.append((self.now, len(self.replicas)))

    def _dispatch(self) -> None:
        for replica in self.replicas:
            if not self.queue:
                return
            if replica.busy or replica.ready_at > self.now:
                continue
            size = min(len(self.queue), self.settings.max_batch_size)
            batch = [self.queue.popleft() for _ in range(size)]
            self.waits.extend(self.now - arrived for arrived, _service in batch)
            replica.busy = True
            self.in_flight += size
            self._at(self.now + max(service for _arrived, service in batch), _FINISH, (replica, size))


def _model_settings(model: str, policy: Policy, sim: SimulationSettings) -> ModelSettings:
    base = ModelSettings(name=model or "model", max_replicas=sim.max_replicas, max_batch_size=sim.max_batch_size)
    idle = policy.idle_timeout_s if policy.idle_timeout_s is not None else base.idle_timeout_s
    return ModelSettings(
        name=base.name,
        min_replicas=policy.min_replicas,
        max_replicas=max(sim.max_replicas, policy.min_replicas),
        idle_timeout_s=idle,
        max_batch_size=sim.max_batch_size,
        idle_policy="fixed" if policy.cold_start_cost_s is None else "adaptive",
        cold_start_cost_s=policy.cold_start_cost_s if policy.cold_start_cost_s is not None else base.cold_start_cost_s,
    )


def simulate(trace: Sequence[TraceRequest], policy: Policy, sim: SimulationSettings) -> PolicyResult:
    """Run ``policy`` over ``trace`` (each model on its own) and add up the models' figures."""
    horizon = sim.horizon_s if sim.horizon_s is not None else max((r.at_s for r in trace), default=0.0)
    runs = []
    for model in sorted({r.model for r in trace}):
        requests = [r for r in trace if r.model == model]
        settings = _model_settings(model, policy, sim)
        learner = GapLearner() if settings.idle_policy == "adaptive" else None
        run = _ModelRun(settings, sim, requests, horizon, learner=learner)
        run.run()
        runs.append(run)
    return PolicyResult(
        name=policy.name,
        min_replicas=policy.min_replicas,
        idle_timeout_s=policy.idle_timeout_s,
        replica_seconds=sum(r.replica_seconds for r in runs),
        cold_start_requests=sum(r.cold_requests for r in runs),
        cold_starts=sum(r.cold_starts for r in runs),
        prewarms=sum(r.prewarms for r in runs),
        cold_start_cost_s=policy.cold_start_cost_s,
        requests=len(trace),
        waits_s=[w for r in runs for w in r.waits],
        timeline=_summed([r.timeline for r in runs]),
    )


def _summed(timelines: Sequence[Sequence[tuple[float, int]]]) -> list[tuple[float, int]]:
    """Step functions (time, value) added up into one."""
    changes = sorted({t for timeline in timelines for t, _ in timeline})
    summed = []
    for t in changes:
        total = 0
        for timeline in timelines:
            total += next((v for at, v in reversed(timeline) if at <= t), 0)
        summed.append((t, total))
    return summed


def policies(idle_timeouts_s: Sequence[float], cold_start_costs_s: Sequence[float] = ()) -> list[Policy]:
    """Always-on, each fixed idle timeout, then the adaptive policy at each cold-start cost (whose fallback idle
    timeout, while it learns, is that cost: the fixed timeout that pays as much for one gap as a cold start)."""
    fixed = [Policy("always-on", 1, None)] + [Policy(f"idle {_seconds(t)}", 0, t) for t in idle_timeouts_s]
    return fixed + [Policy(f"adaptive {_seconds(c)}", 0, c, cold_start_cost_s=c) for c in cold_start_costs_s]


def _seconds(value: float) -> str:
    return f"{value:g}s"


def report_rows(results: Sequence[PolicyResult]) -> list[dict[str, Any]]:
    baseline = results[0].replica_seconds
    return [
        {
            "policy": r.name,
            "min_replicas": r.min_replicas,
            "idle_timeout_s": r.idle_timeout_s,
            "cold_start_cost_s": r.cold_start_cost_s,
            "replica_seconds": r.replica_seconds,
            "cold_start_requests": r.cold_start_requests,
            "cold_starts": r.cold_starts,
            "prewarms": r.prewarms,
            "saved_vs_always_on": 1.0 - r.replica_seconds / baseline if baseline > 0 else None,
            "mean_wait_s": mean(r.waits_s),
            "p99_wait_s": percentile(r.waits_s, 99),
            "beats": None if is_fixed(r) else beats(r, results),
            "beaten_by": None if is_fixed(r) else beaten_by(r, results),
            "vs_fixed_line": None if is_fixed(r) else frontier_gap(r, results),
        }
        for r in results
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cold-start", default="20", metavar="S[,S...]", help="cold-start time(s), e.g. 5,20,60. Default 20"
    )
    parser.add_argument("--idle-timeouts", default="30s,60s,300s,600s", help="comma-separated idle timeouts to compare")
    parser.add_argument(
        "--cold-start-costs",
        default="60s,300s,1800s",
        help="the adaptive keep-alive at each of these cold-start-cost values ('' for none). Default 60s,300s,1800s",
    )
    parser.add_argument("--scale-interval", type=float, default=1.0, metavar="S", help="autoscaler period. Default 1")
    parser.add_argument(
        "--seconds-per-token", type=float, default=0.02, help="generation time per completion token. Default 0.02"
    )
    parser.add_argument("--max-replicas", type=int, default=1, help="per model. Default 1")
    parser.add_argument("--max-batch-size", type=int, default=16, help="per batch. Default 16")
    parser.add_argument("--models", default="model", help="comma-separated model names to spread requests over")
    parser.add_argument(
        "--horizon", type=float, default=None, metavar="S", help="end of the window. Default: last arrival"
    )
    parser.add_argument("--out", type=Path, help="write simulate.png, pareto.png and summary.json here")
    add_trace_arguments(parser)


@dataclass(frozen=True)
class _Panel:
    trace: str
    cold_start_s: float
    requests: int
    duration_s: float
    results: list[PolicyResult]


def _simulate_all(args: argparse.Namespace) -> list[_Panel]:
    """Every policy on every trace named in ``--trace`` (comma-separated) for every ``--cold-start``."""
    timeouts = [parse_duration_s(t) for t in args.idle_timeouts.split(",") if t.strip()]
    costs = [parse_duration_s(c) for c in args.cold_start_costs.split(",") if c.strip()]
    panels = []
    for name in [t.strip() for t in args.trace.split(",") if t.strip()]:
        raw = trace_from_args(argparse.Namespace(**{**vars(args), "trace": name}))
        trace = spread(raw, args.models.split(","), args.seed)
        horizon = args.horizon if args.horizon is not None else max((r.at_s for r in trace), default=0.0)
        for cold_start in (float(c) for c in args.cold_start.split(",") if c.strip()):
            sim = SimulationSettings(
                cold_start_s=cold_start,
                scale_interval_s=args.scale_interval,
                seconds_per_token=args.seconds_per_token,
                horizon_s=args.horizon,
                max_replicas=args.max_replicas,
                max_batch_size=args.max_batch_size,
            )
            results = [simulate(trace, policy, sim) for policy in policies(timeouts, costs)]
            panels.append(_Panel(name, cold_start, len(trace), horizon, results))
    return panels


def _table(panel: _Panel, rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(
        f"simulate {panel.trace}: {panel.requests} requests over {panel.duration_s:.0f} s, "
        f"cold start {panel.cold_start_s:g} s",
        ["policy", "replica-s", "saved", "cold starts", "pre-warms", "cold requests", "mean wait s", "p99 wait s",
         "Pareto-better than", "worse than", "vs fixed line"],
    )  # fmt: skip
    for row in rows:
        saved = row["saved_vs_always_on"]
        better, worse, line = row["beats"], row["beaten_by"], row["vs_fixed_line"]
        table.add(row["policy"], row["replica_seconds"], f"{saved:.0%}" if saved is not None else None,
                  row["cold_starts"], row["prewarms"], row["cold_start_requests"], row["mean_wait_s"],
                  row["p99_wait_s"], None if better is None else ", ".join(better) or "none",
                  None if worse is None else ", ".join(worse) or "none",
                  None if line is None else f"{line:+.0%}")  # fmt: skip
    return table


async def run(args: argparse.Namespace) -> int:
    panels = _simulate_all(args)
    tables, rows = [], []
    for panel in panels:
        panel_rows = report_rows(panel.results)
        tables.append(_table(panel, panel_rows))
        rows += [{"trace": panel.trace, "cold_start_s": panel.cold_start_s, **row} for row in panel_rows]
    traces = {p.trace: {"trace": p.trace, "requests": p.requests, "duration_s": p.duration_s} for p in panels}
    summary = {
        "policies": rows,
        "traces": list(traces.values()),
        "cold_start_s": sorted({p.cold_start_s for p in panels}),
        "models": args.models.split(","),
    }
    if args.out is not None:
        from loadtest.plots import plot_pareto, plot_simulation

        if len(panels) == 1:
            trace = spread(trace_from_args(args), args.models.split(","), args.seed)
            plot_simulation(panels[0].results, [r.at_s for r in trace], args.out / "simulate.png")
        plot_pareto([(p.trace, p.cold_start_s, p.results) for p in panels], args.out / "pareto.png")
    finish(tables, summary, args.out)
    return 0
