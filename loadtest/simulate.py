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
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends import Replicas
from gateway.replicas.coldstarts import smoothed
from gateway.scaling.keepalive import GapLearner
from gateway.scaling.rules import desired_replicas
from gateway.settings import ModelSettings, parse_duration_s
from loadtest.holdout import Split, add_holdout_arguments, learner_constants, score, score_table, split_from_args
from loadtest.pareto import beaten_by, beats, frontier_gap, is_fixed
from loadtest.pool import simulate_pool
from loadtest.pool_report import (
    add_pool_arguments,
    pool_columns,
    pool_policies_from_args,
    pool_settings,
    pool_table,
    target,
    target_table,
)
from loadtest.report import Table, finish
from loadtest.results import PolicyResult
from loadtest.stats import mean, percentile
from loadtest.trace import TraceRequest, add_trace_arguments, spread, trace_from_args

__all__ = ["Policy", "SimulationSettings", "add_arguments", "log_grid", "policies", "report_rows", "run", "simulate"]

_FINISH, _READY, _ARRIVAL, _TICK = range(4)  # event kinds, in the order they are handled at the same instant


@dataclass(frozen=True)
class SimulationSettings:
    #: From asking for a replica to its being ready (the median, when ``cold_start_spread`` is set).
    cold_start_s: float = 20.0
    #: Each replica's start takes ``cold_start_s`` x a lognormal factor of this sigma (0: exactly ``cold_start_s``).
    #: The adaptive policy's learner is fed what the gateway would have measured: the smoothed duration of the cold
    #: starts seen so far (``gateway.replicas.coldstarts.smoothed``), None before the first one.
    cold_start_spread: float = 0.0
    #: Seeds the cold starts' noise (per model).
    seed: int = 0
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
    #: The most replicas per model; None: ``--max-replicas``.
    max_replicas: int | None = None


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
    #: The measured window: replicas are paid for from the trace's first arrival to the horizon.
    start_s: float
    horizon_s: float
    replicas: list[_Replica] = field(default_factory=list)
    #: (arrival, service seconds, arrived with no ready replica)
    queue: deque[tuple[float, float, bool]] = field(default_factory=deque)
    in_flight: int = 0
    activity: float | None = None
    now: float = 0.0
    replica_seconds: float = 0.0
    cold_requests: int = 0
    cold_wait_s: float = 0.0
    cold_starts: int = 0
    prewarms: int = 0
    learner: GapLearner | None = None
    #: The smoothed cold start the gateway would have measured so far (what the learner is given).
    measured_cold_start_s: float | None = None
    #: Each cold start's own duration, as ``ColdStarts.ready`` measures it (scale-up from zero to first ready).
    cold_start_durations_s: list[float] = field(default_factory=list)
    _cold_since: float | None = None
    _noise: random.Random = field(default_factory=random.Random)
    waits: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    _events: list[tuple[float, int, int, Any]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def run(self) -> None:
        self._noise = random.Random(f"{self.sim.seed}:{self.settings.name}")
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
        """Move the clock; replicas are paid for within the window only (later events just finish the waits)."""
        start, end = self.start_s, self.horizon_s
        self.replica_seconds += len(self.replicas) * max(0.0, min(max(to, start), end) - min(max(self.now, start), end))
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
        elif kind == _READY:
            self._ready_replica(payload)
        # Readiness itself is ``ready_at <= now``; the event also makes _dispatch run then.

    def _ready_replica(self, replica: _Replica) -> None:
        """ColdStarts.ready: the first replica ready after a scale-up from zero ends the cold start, measured."""
        if self._cold_since is None or not any(r is replica for r in self.replicas):
            return
        self.cold_start_durations_s.append(self.now - self._cold_since)
        self.measured_cold_start_s = smoothed(self.measured_cold_start_s, self.now - self._cold_since)
        self._cold_since = None

    @property
    def _ready(self) -> int:
        return sum(r.ready_at <= self.now for r in self.replicas)

    def _arrive(self, request: TraceRequest) -> None:
        self.activity = self.now
        service = max(1, request.output_tokens) * self.sim.seconds_per_token
        cold = self._ready == 0
        self.queue.append((self.now, service, cold))
        self.cold_requests += cold
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
            keep_alive = self.learner.decision(self.settings, self.measured_cold_start_s, self.sim.scale_interval_s)
        wanted = desired_replicas(self.settings, demand, idle_for, now, keep_alive)
        if wanted != now.desired:
            self.prewarms += demand == 0 and now.desired == 0
            self._resize(wanted)
        self._at(self.now + self.sim.scale_interval_s, _TICK, None)

    def _resize(self, count: int) -> None:
        if not self.replicas and count > 0:
            self.cold_starts += 1
            self._cold_since = self.now  # ColdStarts.began
        while len(self.replicas) < count:
            replica = _Replica(ready_at=self.now + self._start_s())
            self.replicas.append(replica)
            self._at(replica.ready_at, _READY, replica)
        del self.replicas[count:]  # the newest go first, as the local backend does
        self.timeline.append((self.now, len(self.replicas)))
        if not self.replicas:
            self._cold_since = None  # ColdStarts.abandoned (or nothing was starting)

    def _start_s(self) -> float:
        """How long this replica takes to start."""
        if self.sim.cold_start_spread <= 0:
            return self.sim.cold_start_s
        return self.sim.cold_start_s * math.exp(self._noise.gauss(0.0, self.sim.cold_start_spread))

    def _dispatch(self) -> None:
        for replica in self.replicas:
            if not self.queue:
                return
            if replica.busy or replica.ready_at > self.now:
                continue
            size = min(len(self.queue), self.settings.max_batch_size)
            batch = [self.queue.popleft() for _ in range(size)]
            self.waits.extend(self.now - arrived for arrived, _service, _cold in batch)
            self.cold_wait_s += sum(self.now - arrived for arrived, _service, cold in batch if cold)
            replica.busy = True
            self.in_flight += size
            self._at(self.now + max(service for _arrived, service, _cold in batch), _FINISH, (replica, size))


def _model_settings(model: str, policy: Policy, sim: SimulationSettings) -> ModelSettings:
    base = ModelSettings(name=model or "model", max_replicas=sim.max_replicas, max_batch_size=sim.max_batch_size)
    idle = policy.idle_timeout_s if policy.idle_timeout_s is not None else base.idle_timeout_s
    most = policy.max_replicas if policy.max_replicas is not None else sim.max_replicas
    return ModelSettings(
        name=base.name,
        min_replicas=policy.min_replicas,
        max_replicas=max(most, policy.min_replicas),
        idle_timeout_s=idle,
        max_batch_size=sim.max_batch_size,
        idle_policy="fixed" if policy.cold_start_cost_s is None else "adaptive",
        cold_start_cost_s=policy.cold_start_cost_s if policy.cold_start_cost_s is not None else base.cold_start_cost_s,
    )


def simulate(trace: Sequence[TraceRequest], policy: Policy, sim: SimulationSettings) -> PolicyResult:
    """Run ``policy`` over ``trace`` (each model on its own) and add up the models' figures."""
    horizon = sim.horizon_s if sim.horizon_s is not None else max((r.at_s for r in trace), default=0.0)
    start = min((r.at_s for r in trace), default=0.0)
    runs = []
    for model in sorted({r.model for r in trace}):
        requests = [r for r in trace if r.model == model]
        settings = _model_settings(model, policy, sim)
        learner = GapLearner() if settings.idle_policy == "adaptive" else None
        run = _ModelRun(settings, sim, requests, start, horizon, learner=learner)
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
        cold_start_wait_s=sum(r.cold_wait_s for r in runs),
        max_replicas=max((r.settings.max_replicas for r in runs), default=None),
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
    """Always-on (``min_replicas = 1``, scaling up to ``--max-replicas``), one replica always on and never more,
    each fixed idle timeout, then the adaptive policy at each cold-start cost (whose fallback idle timeout, while it
    learns, is that cost: the fixed timeout that pays as much for one gap as a cold start)."""
    always = [Policy(ALWAYS_ON, 1, None), Policy(ONE_REPLICA, 1, None, max_replicas=1)]
    fixed = always + [Policy(f"idle {_seconds(t)}", 0, t) for t in idle_timeouts_s]
    return fixed + [Policy(f"adaptive {_seconds(c)}", 0, c, cold_start_cost_s=c) for c in cold_start_costs_s]


#: The baselines' names: ``saved_vs_always_on`` and ``saved_vs_one_replica`` are relative to them.
ALWAYS_ON, ONE_REPLICA = "always-on", "one replica"


def log_grid(lowest_s: float, highest_s: float, points: int) -> list[float]:
    """``points`` idle timeouts from ``lowest_s`` to ``highest_s``, evenly spaced in log, rounded to the second."""
    ratio = highest_s / lowest_s
    return [float(round(lowest_s * ratio ** (i / (points - 1)))) for i in range(points)]


def parse_idle_timeouts(text: str) -> list[float]:
    """``log:10s:1h:13`` (a log-spaced grid) or a comma-separated list (``30s,60s``)."""
    if text.startswith("log:"):
        lowest, highest, points = text.removeprefix("log:").split(":")
        return log_grid(parse_duration_s(lowest), parse_duration_s(highest), int(points))
    return [parse_duration_s(t) for t in text.split(",") if t.strip()]


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _saved(result: PolicyResult, baseline: PolicyResult | None) -> float | None:
    if baseline is None or baseline.replica_seconds <= 0:
        return None
    return 1.0 - result.replica_seconds / baseline.replica_seconds


def report_rows(results: Sequence[PolicyResult]) -> list[dict[str, Any]]:
    always_on = next((r for r in results if r.name == ALWAYS_ON), results[0])
    one = next((r for r in results if r.name == ONE_REPLICA), None)
    return [
        {
            "policy": r.name,
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "idle_timeout_s": r.idle_timeout_s,
            "cold_start_cost_s": r.cold_start_cost_s,
            "replica_seconds": r.replica_seconds,
            "cold_start_requests": r.cold_start_requests,
            "cold_start_wait_s": r.cold_start_wait_s,
            "cold_starts": r.cold_starts,
            "prewarms": r.prewarms,
            "saved_vs_always_on": _saved(r, always_on),
            "saved_vs_one_replica": _saved(r, one),
            "mean_wait_s": mean(r.waits_s),
            "p99_wait_s": percentile(r.waits_s, 99),
            "beats": None if is_fixed(r) else beats(r, results),
            "beaten_by": None if is_fixed(r) else beaten_by(r, results),
            "vs_fixed_line": None if is_fixed(r) else frontier_gap(r, results),
            **pool_columns(r),
        }
        for r in results
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cold-start", default="20", metavar="S[,S...]", help="cold-start time(s), e.g. 5,20,60. Default 20"
    )
    parser.add_argument(
        "--cold-start-spread",
        type=float,
        default=0.3,
        metavar="SIGMA",
        help="each start takes the cold-start time x a lognormal factor of this sigma (seeded); the adaptive "
        "policy learns from the smoothed measurement, as the gateway does. 0: exact. Default 0.3",
    )
    parser.add_argument(
        "--idle-timeouts",
        default="log:10s:1h:13",
        help="idle timeouts to compare: comma-separated, or log:LOWEST:HIGHEST:POINTS. Default log:10s:1h:13",
    )
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
    parser.add_argument(
        "--models",
        default="model",
        help="comma-separated model names to spread requests over (seeded), or a count N: models m1..mN",
    )
    parser.add_argument(
        "--horizon", type=float, default=None, metavar="S", help="end of the window. Default: last arrival"
    )
    add_holdout_arguments(parser)
    add_pool_arguments(parser)
    parser.add_argument("--out", type=Path, help="write simulate.png, pareto.png and summary.json here")
    add_trace_arguments(parser)


@dataclass(frozen=True)
class _Panel:
    trace: str
    seed: int
    held_out: bool
    cold_start_s: float
    requests: int
    duration_s: float
    results: list[PolicyResult]

    @property
    def label(self) -> str:
        return f"{self.trace} seed {self.seed}"


def _simulate_all(args: argparse.Namespace, split: Split) -> list[_Panel]:
    """Every policy on every trace named in ``--trace`` (comma-separated), for every seed and ``--cold-start``."""
    timeouts = parse_idle_timeouts(args.idle_timeouts)
    costs = [parse_duration_s(c) for c in args.cold_start_costs.split(",") if c.strip()]
    models = model_names(args.models)
    panels = []
    for seed in split.seeds:
        for name in [t.strip() for t in args.trace.split(",") if t.strip()]:
            trace = _trace(args, name, seed)
            horizon = args.horizon if args.horizon is not None else max((r.at_s for r in trace), default=0.0)
            first = min((r.at_s for r in trace), default=0.0)
            for cold_start in (float(c) for c in args.cold_start.split(",") if c.strip()):
                sim = SimulationSettings(
                    cold_start_s=cold_start,
                    cold_start_spread=args.cold_start_spread,
                    seed=seed,
                    scale_interval_s=args.scale_interval,
                    seconds_per_token=args.seconds_per_token,
                    horizon_s=args.horizon,
                    max_replicas=args.max_replicas,
                    max_batch_size=args.max_batch_size,
                )
                results = [simulate(trace, policy, sim) for policy in policies(timeouts, costs)]
                if args.pool:
                    pool_sim = pool_settings(args, cold_start)
                    results += [
                        simulate_pool(trace, p, pool_sim) for p in pool_policies_from_args(args, pool_sim, costs)
                    ]
                held_out = split.held_out(name, seed, len(models))
                panels.append(_Panel(name, seed, held_out, cold_start, len(trace), horizon - first, results))
    return panels


def model_names(text: str) -> list[str]:
    """``--models``: names, comma-separated, or a count (``20``: m1 to m20)."""
    if text.strip().isdigit():
        return [f"m{i}" for i in range(1, int(text) + 1)]
    return text.split(",")


def _trace(args: argparse.Namespace, name: str, seed: int) -> list[TraceRequest]:
    raw = trace_from_args(argparse.Namespace(**{**vars(args), "trace": name, "seed": seed}))
    return spread(raw, model_names(args.models), seed)


def _table(panel: _Panel, rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(
        f"simulate {panel.trace} (seed {panel.seed}, {'held out' if panel.held_out else 'tuning set'}): "
        f"{panel.requests} requests over {panel.duration_s:.0f} s, cold start {panel.cold_start_s:g} s",
        ["policy", "replica-s", "saved vs 1", "cold starts", "pre-warms", "cold requests", "cold wait s",
         "mean wait s", "p99 wait s", "Pareto-better than", "worse than", "vs fixed line"],
    )  # fmt: skip
    for row in rows:
        saved = row["saved_vs_one_replica"]
        better, worse, line = row["beats"], row["beaten_by"], row["vs_fixed_line"]
        table.add(row["policy"], row["replica_seconds"], f"{saved:.0%}" if saved is not None else None,
                  row["cold_starts"], row["prewarms"], row["cold_start_requests"], row["cold_start_wait_s"],
                  row["mean_wait_s"], row["p99_wait_s"], None if better is None else ", ".join(better) or "none",
                  None if worse is None else ", ".join(worse) or "none",
                  None if line is None else f"{line:+.0%}")  # fmt: skip
    return table


async def run(args: argparse.Namespace) -> int:
    split = split_from_args(args)
    panels = _simulate_all(args, split)
    tables, rows, checks = [], [], []
    for panel in panels:
        panel_rows = report_rows(panel.results)
        tables.append(_table(panel, [r for r in panel_rows if r["kind"] == "deployment"]))
        if args.pool:
            tables.append(pool_table(f"pool {panel.label}, cold start {panel.cold_start_s:g} s", panel_rows))
            checks += [{"panel": f"{panel.label} {panel.cold_start_s:g}s", **c} for c in target(panel_rows)]
        where = {"trace": panel.trace, "seed": panel.seed, "held_out": panel.held_out}
        rows += [{**where, "cold_start_s": panel.cold_start_s, **row} for row in panel_rows]
    scores = score([r for r in rows if r["kind"] == "deployment"])
    tables.append(score_table(scores))
    pool_scores = score([r for r in rows if r["kind"] == "pool"]) if args.pool else []
    if args.pool:
        tables += [score_table(pool_scores, "learned pool"), target_table(checks)]
    traces = {
        (p.trace, p.seed): {"trace": p.trace, "seed": p.seed, "held_out": p.held_out, "requests": p.requests,
                            "duration_s": p.duration_s}
        for p in panels
    }  # fmt: skip
    summary = {
        "policies": rows,
        "traces": list(traces.values()),
        "cold_start_s": sorted({p.cold_start_s for p in panels}),
        "cold_start_spread": args.cold_start_spread,
        "models": model_names(args.models),
        "learner": learner_constants(),
        "split": split.describe(),
        "score": scores,
    }
    if args.pool:
        summary["pool"] = {"settings": vars(pool_settings(args, panels[0].cold_start_s)) if panels else None,
                           "score": pool_scores, "target": checks}  # fmt: skip
    if args.out is not None:
        from loadtest.plots import plot_pareto, plot_simulation

        if len(panels) == 1:
            trace = _trace(args, panels[0].trace, panels[0].seed)
            plot_simulation(panels[0].results, [r.at_s for r in trace], args.out / "simulate.png")
        several = len(split.seeds) > 1
        labels = [p.label if several else p.trace for p in panels]
        plot_pareto([(label, p.cold_start_s, [r for r in p.results if r.pool is None])
                     for label, p in zip(labels, panels, strict=True)], args.out / "pareto.png")  # fmt: skip
        if args.pool:
            from loadtest.plots import plot_pool

            plot_pool([(label, p.cold_start_s, p.results) for label, p in zip(labels, panels, strict=True)],
                      args.out / "pool.png")  # fmt: skip
    finish(tables, summary, args.out)
    return 0
