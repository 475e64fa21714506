"""``/metrics`` text: the per-model gauges kept as text read like ``prometheus_client``'s own."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends import Replicas
from gateway.metrics import Metrics, ModelGauges

pytestmark = pytest.mark.unit


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def as_prometheus_client_renders(observed: dict[str, tuple[int, int, Replicas]]) -> str:
    registry = CollectorRegistry()
    queued = Gauge("kaltstart_queue_depth", "Requests waiting for a replica.", ["model"], registry=registry)
    in_flight = Gauge("kaltstart_in_flight", "Requests being generated.", ["model"], registry=registry)
    replicas = Gauge("kaltstart_replicas", "Replicas by state (desired, ready).", ["model", "state"], registry=registry)
    for model, (q, f, r) in observed.items():
        queued.labels(model).set(q)
        in_flight.labels(model).set(f)
        replicas.labels(model, "desired").set(r.desired)
        replicas.labels(model, "ready").set(r.ready)
    return generate_latest(registry).decode()


def test_per_model_gauges_render_as_prometheus_client_would() -> None:
    metrics = Metrics()
    observed = {"llama": (3, 1, Replicas(2, 1)), "qwen/0.5b": (0, 0, Replicas(0, 0)), "a:b.c": (7, 0, Replicas(1, 0))}
    metrics.observe_model("llama", 9, 9, Replicas(9, 9))  # replaced below
    for model, (q, f, r) in observed.items():
        metrics.observe_model(model, q, f, r)
    metrics.requests.labels("llama", "200").inc()

    text = metrics.render().decode()

    expected = samples(as_prometheus_client_renders(observed))
    assert {k: v for k, v in samples(text).items() if k[0] in {"kaltstart_queue_depth", "kaltstart_in_flight",
                                                             "kaltstart_replicas"}} == expected  # fmt: skip
    assert 'kaltstart_replicas{model="llama",state="ready"} 1.0' in text
    assert "# TYPE kaltstart_replicas gauge" in text and text.count("# TYPE kaltstart_replicas ") == 1
    assert samples(text)[("kaltstart_requests_total", (("model", "llama"), ("status", "200")))] == 1.0


def test_single_samples_are_readable_from_the_registry() -> None:
    metrics = Metrics()
    metrics.observe_model("llama", 3, 1, Replicas(2, 1))
    assert metrics.registry.get_sample_value("kaltstart_queue_depth", {"model": "llama"}) == 3
    assert metrics.registry.get_sample_value("kaltstart_replicas", {"model": "llama", "state": "desired"}) == 2
    metrics.models.forget("llama")
    assert metrics.registry.get_sample_value("kaltstart_queue_depth", {"model": "llama"}) is None
    assert "llama" not in metrics.render().decode()


def test_a_model_that_left_the_catalog_has_no_gauges() -> None:
    gauges = ModelGauges()
    gauges.observe("kept", (1, 0, 1, 1))
    gauges.observe("gone", (0, 0, 0, 0))
    gauges.keep_only({"kept"})
    assert 'model="kept"' in gauges.text() and 'model="gone"' not in gauges.text()
