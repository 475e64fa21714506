"""Prometheus metrics, one registry per gateway so that tests can run several side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gateway.backends import Replicas

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            "Replica announcements received, by outcome (accepted, refused: from an address the backend does not "
            "vouch for; malformed).",
            ["outcome"],
            registry=r,
        )
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
        self.queued = Gauge("kaltstart_queue_depth", "Requests waiting for a replica.", ["model"], registry=r)
        self.in_flight = Gauge("kaltstart_in_flight", "Requests being generated.", ["model"], registry=r)
        self.replicas = Gauge(
            "kaltstart_replicas", "Replicas by state (desired, ready).", ["model", "state"], registry=r
        )

    def observe_model(self, model: str, queued: int, in_flight: int, replicas: Replicas) -> None:
        self.queued.labels(model).set(queued)
        self.in_flight.labels(model).set(in_flight)
        self.replicas.labels(model, "desired").set(replicas.desired)
        self.replicas.labels(model, "ready").set(replicas.ready)

    def render(self) -> bytes:
        return generate_latest(self.registry)
