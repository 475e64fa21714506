"""Prometheus metrics, one registry per gateway so that tests can run several side by side.

A scrape costs work per model with activity, not per model served: the per-model gauges every model has (queue
depth, in flight, replicas) are kept by ``ModelGauges`` as the autoscaler last observed them, each model's lines
formatted when its values change, so ``GET /metrics`` joins text instead of formatting 4 samples x N models
through ``prometheus_client`` (what that cost: docs/loadtest.md, "bench scale"), and reads nothing from Redis.
Pool replicas (``PoolGauges``) are rendered from what the gateway last heard from them; a scrape calls no replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import wire

if TYPE_CHECKING:
    from gateway.backends import Replicas

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


#: The per-model gauges: (name, help, label name and value of a second label, if any) per sample kind.
_GAUGES = (
    ("kaltstart_queue_depth", "Requests waiting for a replica.", None),
    ("kaltstart_in_flight", "Requests being generated.", None),
    ("kaltstart_replicas", "Replicas by state (desired, ready).", ("state", "desired")),
    ("kaltstart_replicas", "Replicas by state (desired, ready).", ("state", "ready")),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(extra: tuple[str, str] | None) -> str:
    return "" if extra is None else f',{extra[0]}="{extra[1]}"'


class ModelGauges(Collector):
    """Queue depth, in-flight requests and replicas per model, as last observed (``observe``), rendered from
    text kept per model (``text``). Also a collector, so ``registry.get_sample_value`` reads them."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, int, int, int]] = {}
        self._lines: dict[str, tuple[str, ...]] = {}

    def observe(self, model: str, values: tuple[int, int, int, int]) -> None:
        if self._values.get(model) == values:
            return
        self._values[model] = values
        label = _escape(model)
        self._lines[model] = tuple(
            f'{name}{{model="{label}"{_label_text(extra)}}} {float(value)}\n'
            for (name, _, extra), value in zip(_GAUGES, values, strict=True)
        )

    def forget(self, model: str) -> None:
        self._values.pop(model, None)
        self._lines.pop(model, None)

    def keep_only(self, models: Collection[str]) -> None:
        """Forget every model not in ``models`` (it left the catalog)."""
        for model in [m for m in self._values if m not in models]:
            self.forget(model)

    def text(self) -> str:
        parts: list[str] = []
        for index, (name, help_text, _) in enumerate(_GAUGES):
            if index == 0 or name != _GAUGES[index - 1][0]:
                parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(lines[index] for lines in self._lines.values())
        return "".join(parts)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for index, (name, help_text, extra) in enumerate(_GAUGES):
            labels = ["model", *([extra[0]] if extra else [])]
            family = families.setdefault(name, GaugeMetricFamily(name, help_text, labels=labels))
            for model, values in self._values.items():
                family.add_metric([model, *([extra[1]] if extra else [])], values[index])
        yield from families.values()


@dataclass(frozen=True)
class PoolReplica:
    """One pool replica as this gateway last heard from it: where it holds its models (``residency``, from every
    batch answer), its last whole report (``report``, from its ``/readyz``; None until read) and the models it is
    ready for (``models``: the only ones its series name, so a replica cannot grow the series)."""

    url: str
    residency: wire.Residency
    report: wire.PoolReport | None
    models: Collection[str]


#: The moves of a pool model: (``move`` label, its count and its seconds in ``wire.PoolModel``).
_MOVES = (("load", "loads", "load_s"), ("wake", "wakes", "wake_s"), ("park", "parks", "park_s"),
          ("unload", "unloads", "unload_s"))  # fmt: skip
_STATES: tuple[wire.ModelState, ...] = ("active", "parked", "absent")


class PoolGauges(Collector):
    """Pool models and memory, from what ``source`` (``ReadyEndpoints.pool_replicas``) returns at a scrape: what
    the batch answers and ``/readyz`` reads of the gateway last said, never a call to a replica.

    The moves are the replicas' own cumulative counts (and seconds), labelled by replica: a replica's restart
    resets them, which ``rate()`` takes as a counter reset, and series of one replica from several gateways are
    told apart by the scraped instance (``max by (model, replica, move)`` counts each once). They move when the
    gateway reads a report, which it does whenever a batch answer says a replica's models moved."""

    def __init__(self, source: Callable[[], Iterable[PoolReplica]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "kaltstart_model_state",
            "Ready pool replicas holding the model, by state (active: on the device; parked: in host memory; "
            "absent: on disk).",
            labels=["model", "state"],
        )
        moves = CounterMetricFamily(
            "kaltstart_pool_moves",
            "A pool replica's moves of a model (load, wake, park, unload), as the replica counts them.",
            labels=["model", "replica", "move"],
        )
        seconds = CounterMetricFamily(
            "kaltstart_pool_move_seconds",
            "Seconds a pool replica's moves of a model took, summed, as the replica counts them.",
            labels=["model", "replica", "move"],
        )
        used = GaugeMetricFamily(
            "kaltstart_pool_bytes",
            "Weight bytes a pool replica holds, by memory (device, host).",
            labels=["replica", "memory"],
        )
        budget = GaugeMetricFamily(
            "kaltstart_pool_budget_bytes",
            "A pool replica's budget, by memory (device, host).",
            labels=["replica", "memory"],
        )
        held: dict[str, dict[wire.ModelState, int]] = {}
        for replica in self._source():
            for model in replica.models:
                counts = held.setdefault(model, dict.fromkeys(_STATES, 0))
                counts[replica.residency.state(model)] += 1
            if replica.report is not None:
                _add_report(replica, replica.report, moves, seconds, used, budget)
        for model, counts in held.items():
            for name, count in counts.items():
                state.add_metric([model, name], count)
        yield from (state, moves, seconds, used, budget)


def _add_report(
    replica: PoolReplica,
    report: wire.PoolReport,
    moves: CounterMetricFamily,
    seconds: CounterMetricFamily,
    used: GaugeMetricFamily,
    budget: GaugeMetricFamily,
) -> None:
    for model in replica.models:
        reported = report.models.get(model)
        if reported is None:
            continue
        for move, count, took in _MOVES:
            moves.add_metric([model, replica.url, move], getattr(reported, count))
            seconds.add_metric([model, replica.url, move], getattr(reported, took))
    used.add_metric([replica.url, "device"], report.device_bytes)
    used.add_metric([replica.url, "host"], report.host_bytes)
    budget.add_metric([replica.url, "device"], report.device_budget_bytes)
    budget.add_metric([replica.url, "host"], report.host_budget_bytes)


class ReplicaSeconds:
    """Replica-seconds per model (``kaltstart_replica_seconds_total``), summed from the autoscaler's observations
    of each model (every pass, every model): each adds the replicas held at the one before times the seconds
    since, as ``busy`` if the model had requests queued or in flight then, else ``idle`` (what keeping it warm
    cost). Held: ``max(desired, ready)``, as a starting replica holds its GPU, and so does a stopping one."""

    def __init__(self, counter: Counter, clock: Callable[[], float]) -> None:
        self._counter = counter
        self._clock = clock
        #: Per model: when it was last observed, the replicas it held and whether it was busy then.
        self._last: dict[str, tuple[float, int, bool]] = {}

    def observe(self, model: str, held: int, busy: bool) -> None:
        now = self._clock()
        last = self._last.get(model)
        self._last[model] = (now, held, busy)
        if last is not None and last[1] > 0:
            since, replicas, was_busy = last
            self._counter.labels(model, "busy" if was_busy else "idle").inc(replicas * max(0.0, now - since))

    def keep_only(self, models: Collection[str]) -> None:
        for model in [m for m in self._last if m not in models]:
            del self._last[model]


#: ``kaltstart_replica_announcements_total``'s outcomes, each exported from 0 on.
ANNOUNCEMENT_OUTCOMES = ("accepted", "refused", "unconfirmed", "malformed", "oversized")


class AdapterGauges(Collector):
    """LoRA adapters loaded per replica, as the replicas last said (``LoadedAdapters.counts``): read at a scrape."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        loaded = GaugeMetricFamily(
            "kaltstart_replica_adapters_loaded",
            "LoRA adapters a ready replica holds loaded on its device, as its last batch answer or /readyz said.",
            labels=["replica"],
        )
        for url, count in self._source():
            loaded.add_metric([url], count)
        yield loaded


class Metrics:
    """``backend``: a backend's own metrics (``RouteMetrics``), served with these; ``pools``: the pool replicas as
    last heard from (``ReadyEndpoints.pool_replicas``), read at each scrape; ``adapters``: the adapters loaded per
    replica (``LoadedAdapters.counts``), likewise; ``clock``: what replica-seconds are measured with.

    Counters that alert rules watch with ``increase()`` (announcements, poison requests, redeliveries, cold starts
    over budget) are exported at 0 before their first count: a series that appears at 1 shows no increase, so
    the first poison request of a model would not alert."""

    def __init__(
        self,
        backend: Collection[Collector] = (),
        pools: Callable[[], Iterable[PoolReplica]] = tuple,
        clock: Callable[[], float] = time.monotonic,
        adapters: Callable[[], Iterable[tuple[str, int]]] = tuple,
    ) -> None:
        #: What ``render`` formats with ``prometheus_client``: metrics with a series per model with activity.
        self._standard = CollectorRegistry()
        self.models = ModelGauges()
        #: Everything, for reading single samples (``get_sample_value``).
        self.registry = CollectorRegistry()
        self.registry.register(_Both(self._standard, self.models))
        r = self._standard
        self.requests = Counter(
            "kaltstart_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "kaltstart_request_duration_seconds",
            "Arrival to last byte.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "kaltstart_time_to_first_token_seconds",
            "Arrival to first streamed token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "kaltstart_queue_wait_seconds",
            "Arrival to dispatch to a replica.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cold_starts = Counter("kaltstart_cold_starts", "Scale-ups from zero replicas.", ["model"], registry=r)
        self.cold_starts_over_budget = Counter(
            "kaltstart_cold_starts_over_budget",
            "Cold starts that took longer than the model's cold-start-timeout (its waiting requests got 503), "
            "counted when they end: ready, or given up at a scale-down.",
            ["model"],
            registry=r,
        )
        self.cold_start_seconds = Histogram(
            "kaltstart_cold_start_duration_seconds",
            "Scale-up from zero to the first ready replica.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cold_start_phases = Histogram(
            "kaltstart_cold_start_seconds",
            "Where cold starts go, by phase: scale_to_ready and ready_to_dispatch as this gateway saw them; "
            "process, cache, imports, load, warmup and replica_total as each replica reported its own start.",
            ["model", "phase"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.announcements = Counter(
            "kaltstart_replica_announcements",
            "Replica announcements received, by outcome (accepted; refused: from an address the backend does not "
            "vouch for; unconfirmed: ready or stopping, and the replica's /readyz did not agree; malformed; "
            "oversized: longer than wire.MAX_ANNOUNCEMENT_BYTES).",
            ["outcome"],
            registry=r,
        )
        for outcome in ANNOUNCEMENT_OUTCOMES:
            self.announcements.labels(outcome)
        self.scale_writes = Counter(
            "kaltstart_scale_writes",
            "Replica counts this gateway changed, by direction.",
            ["model", "direction"],
            registry=r,
        )
        self.batches = Counter("kaltstart_batches", "Batches sent to runtimes.", ["model"], registry=r)
        self.batch_size = Histogram(
            "kaltstart_batch_size",
            "Requests per batch.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.redeliveries = Counter(
            "kaltstart_redeliveries", "Requests put back after their replica failed.", ["model"], registry=r
        )
        self.streamed = Counter(
            "kaltstart_streamed_deltas",
            "Text deltas (about one per token) relayed from runtimes to streaming clients by this gateway.",
            ["model"],
            registry=r,
        )
        self.stopped = Counter(
            "kaltstart_stopped_on_replica",
            "Cancelled requests that a runtime replica dropped from its running batch.",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            "kaltstart_cancelled_requests",
            "Requests cancelled before they were answered, by reason (client_gone, timeout, orphaned).",
            ["model", "reason"],
            registry=r,
        )
        self.poison = Counter(
            "kaltstart_poison_requests",
            "Requests given up after their replica failed on every attempt.",
            ["model"],
            registry=r,
        )
        self.keep_alive_seconds = Gauge(
            "kaltstart_keep_alive_seconds",
            "The keep-alive in force (idle-policy adaptive): keep, and the pre-warm window (0: none), in idle seconds.",
            ["model", "window"],
            registry=r,
        )
        self.keep_alive_learned = Gauge(
            "kaltstart_keep_alive_learned",
            "1 while the adaptive keep-alive uses what it learned, 0 while it falls back to the idle-timeout.",
            ["model"],
            registry=r,
        )
        self.prewarms = Counter(
            "kaltstart_prewarms", "Scale-ups from zero ahead of an expected request.", ["model"], registry=r
        )
        self.cold_starts_avoided = Counter(
            "kaltstart_cold_starts_avoided",
            "Idle gaps ended warm by the adaptive keep-alive that the fixed idle-timeout would have ended cold.",
            ["model"],
            registry=r,
        )
        self.cold_starts_added = Counter(
            "kaltstart_cold_starts_added",
            "Idle gaps ended cold by the adaptive keep-alive that the fixed idle-timeout would have ended warm.",
            ["model"],
            registry=r,
        )
        # Per API key: labelled by the key's configured name, else ``key-`` and a short hash of it; never the key.
        self.key_requests = Counter(
            "kaltstart_key_requests",
            "Requests queued per API key (its name in the key file, or key-<hash>).",
            ["key"],
            registry=r,
        )
        self.key_refusals = Counter(
            "kaltstart_key_refusals",
            "Requests refused with 429 for an API key's quota, by quota (requests, entries, bytes).",
            ["key", "quota"],
            registry=r,
        )
        self.redis_up = Gauge(
            "kaltstart_redis_up",
            "1 while this gateway's last heartbeat write to Redis succeeded, 0 once one failed.",
            registry=r,
        )
        self.queue_limit = Gauge(
            "kaltstart_queue_limit",
            "Requests queued and in flight per model beyond which new ones get 429 (KALTSTART_MAX_QUEUE).",
            registry=r,
        )
        self.replica_seconds = ReplicaSeconds(
            Counter(
                "kaltstart_replica_seconds",
                "Seconds of model replicas held (max of desired and ready, so starting ones count), by load: busy "
                "(requests queued or in flight) or idle. Every gateway replica counts the same replicas.",
                ["model", "load"],
                registry=r,
            ),
            clock,
        )
        self.pools = PoolGauges(pools)
        r.register(self.pools)
        r.register(AdapterGauges(adapters))
        for collector in backend:
            r.register(collector)

    def observe_model(self, model: str, queued: int, in_flight: int, replicas: Replicas) -> None:
        self.models.observe(model, (queued, in_flight, replicas.desired, replicas.ready))
        self.replica_seconds.observe(model, max(replicas.desired, replicas.ready), busy=queued + in_flight > 0)

    def keep_only(self, models: Collection[str]) -> None:
        """Forget the per-model state of every model not in ``models`` (it left the catalog)."""
        self.models.keep_only(models)
        self.replica_seconds.keep_only(models)

    def dispatching(self, model: str) -> None:
        """``model``'s first batch: its failure counters are exported from 0 on (see the class docstring)."""
        self.redeliveries.labels(model)
        self.poison.labels(model)

    def render(self) -> bytes:
        return generate_latest(self._standard) + self.models.text().encode()


class RouteMetrics:
    """The Kubernetes backend's: route claims it refused and EndpointSlices it ignored. Built with the backend
    (before the app's ``Metrics``), served through ``Metrics(backend=...)``. The ``model`` label only ever names a
    model that is served or on the allow-list, so a Deployment author cannot grow the series."""

    def __init__(self) -> None:
        self.conflicts = Counter(
            "kaltstart_route_conflicts",
            "Deployments refused a model name, by reason (route_conflict: another Deployment serves it; "
            "route_not_allowed: the route allow-list names others).",
            ["model", "reason"],
            registry=None,
        )
        self.ignored_slices = Counter(
            "kaltstart_endpointslices_ignored",
            "EndpointSlices left out because the EndpointSlice controller does not manage them.",
            registry=None,
        )

    @property
    def collectors(self) -> tuple[Collector, ...]:
        return self.conflicts, self.ignored_slices


class _Both(Collector):
    def __init__(self, standard: CollectorRegistry, models: ModelGauges) -> None:
        self._standard = standard
        self._models = models

    def collect(self) -> Iterator[Metric]:
        yield from self._standard.collect()
        yield from self._models.collect()
