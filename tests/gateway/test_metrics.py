"""``/metrics`` text: the per-model gauges kept as text read like ``prometheus_client``'s own."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import wire
from gateway.backends import Replicas
from gateway.metrics import ANNOUNCEMENT_OUTCOMES, Metrics, ModelGauges
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from tests.gateway.replicas.test_endpoints import Clock

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


def test_replica_seconds_add_up_the_replicas_held_between_observations_busy_or_idle() -> None:
    """``kaltstart_replica_seconds_total``: the dashboard's GPU time per model, and what idle replicas cost."""
    clock = Clock()
    metrics = Metrics(clock=clock)

    def seconds(load: str) -> float | None:
        return metrics.registry.get_sample_value("kaltstart_replica_seconds_total", {"model": "m", "load": load})

    metrics.observe_model("m", 0, 0, Replicas(desired=0, ready=0))
    clock.now += 5
    metrics.observe_model("m", 2, 0, Replicas(desired=1, ready=0))  # nothing held for those 5 s
    assert seconds("busy") is None and seconds("idle") is None
    clock.now += 10
    metrics.observe_model("m", 0, 1, Replicas(desired=2, ready=1))  # 1 starting replica, busy, for 10 s
    assert seconds("busy") == 10
    clock.now += 4
    metrics.observe_model("m", 0, 0, Replicas(desired=0, ready=2))  # 2 busy for 4 s; then scaled down, idle
    assert seconds("busy") == 18
    clock.now += 3
    metrics.observe_model("m", 0, 0, Replicas(desired=0, ready=0))  # 2 stopping replicas, idle, for 3 s
    assert (seconds("busy"), seconds("idle")) == (18, 6)
    clock.now += 100
    metrics.observe_model("m", 0, 0, Replicas(desired=0, ready=0))
    assert (seconds("busy"), seconds("idle")) == (18, 6)
    assert 'kaltstart_replica_seconds_total{load="idle",model="m"} 6.0' in metrics.render().decode()


def test_replica_seconds_of_a_model_that_left_the_catalog_start_again_from_its_return() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    metrics.observe_model("m", 0, 0, Replicas(desired=1, ready=1))
    metrics.keep_only(set())
    clock.now += 50  # gone meanwhile: not counted
    metrics.observe_model("m", 0, 0, Replicas(desired=1, ready=1))
    clock.now += 2
    metrics.observe_model("m", 0, 0, Replicas(desired=1, ready=1))
    assert metrics.registry.get_sample_value("kaltstart_replica_seconds_total", {"model": "m", "load": "idle"}) == 2


def test_counters_that_alerts_watch_with_increase_are_exported_from_zero() -> None:
    """A series born at 1 shows no ``increase()``: the first refused announcement, the first poison request of
    a model would not alert."""
    metrics = Metrics()
    text = metrics.render().decode()
    for outcome in ANNOUNCEMENT_OUTCOMES:
        assert f'kaltstart_replica_announcements_total{{outcome="{outcome}"}} 0.0' in text
    assert 'kaltstart_poison_requests_total{model="m"}' not in text  # not for every model served: from its first batch
    metrics.dispatching("m")
    text = metrics.render().decode()
    assert 'kaltstart_poison_requests_total{model="m"} 0.0' in text
    assert 'kaltstart_redeliveries_total{model="m"} 0.0' in text


# Pool replicas: what their reports and batch answers said, served without calling them.

R1, R2 = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def pool_report(a: wire.PoolModel, b: wire.PoolModel, *, device_bytes: int = 10) -> wire.PoolReport:
    return wire.PoolReport(
        device_bytes=device_bytes, device_budget_bytes=15, host_bytes=10, host_budget_bytes=20, models={"a": a, "b": b}
    )


def two_pool_replicas() -> tuple[Metrics, ReadyEndpoints]:
    endpoints = ReadyEndpoints()
    for name in ("a", "b"):
        endpoints.set(name, [R1, R2])
    active = wire.PoolModel(state="active", weight_bytes=10, loads=1, wakes=2, load_s=0.5, wake_s=0.25)
    parked = wire.PoolModel(state="parked", weight_bytes=10, loads=1, parks=1, load_s=0.5, park_s=0.125)
    pool = EndpointPool("a", endpoints, budget=4)
    pool.learn_report(R1, pool_report(active, parked))
    pool.learn_report(R2, pool_report(parked, active))
    return Metrics(pools=endpoints.pool_replicas), endpoints


def test_pool_models_count_replicas_per_state_and_their_moves_as_the_replicas_report_them() -> None:
    metrics, _ = two_pool_replicas()
    got = samples(metrics.render().decode())

    for model in ("a", "b"):
        states = {
            s: got[("kaltstart_model_state", (("model", model), ("state", s)))] for s in ("active", "parked", "absent")
        }
        assert states == {"active": 1, "parked": 1, "absent": 0}, model
    moves = (("model", "a"), ("move", "wake"), ("replica", R1))
    assert got[("kaltstart_pool_moves_total", moves)] == 2
    assert got[("kaltstart_pool_move_seconds_total", moves)] == 0.25
    assert got[("kaltstart_pool_moves_total", (("model", "a"), ("move", "park"), ("replica", R2)))] == 1
    assert got[("kaltstart_pool_move_seconds_total", (("model", "b"), ("move", "load"), ("replica", R2)))] == 0.5
    assert got[("kaltstart_pool_bytes", (("memory", "device"), ("replica", R1)))] == 10
    assert got[("kaltstart_pool_budget_bytes", (("memory", "host"), ("replica", R2)))] == 20


def test_a_batch_answer_moves_the_state_at_once_and_a_replica_that_left_is_forgotten() -> None:
    metrics, endpoints = two_pool_replicas()
    EndpointPool("b", endpoints, budget=4).learn(R1, wire.Residency(active=("b",), parked=("a",)))

    def state(model: str, name: str) -> float | None:
        return metrics.registry.get_sample_value("kaltstart_model_state", {"model": model, "state": name})

    assert (state("a", "active"), state("a", "parked"), state("b", "active")) == (0, 2, 2)
    endpoints.set("a", [R2])  # R1 is no replica of a any more: its series leave a out
    assert (state("a", "active"), state("a", "parked"), state("b", "active")) == (0, 1, 2)
    assert (
        metrics.registry.get_sample_value("kaltstart_pool_moves_total", {"model": "a", "replica": R1, "move": "load"})
        is None
    )
    for name in ("a", "b"):
        endpoints.set(name, [])
    assert "kaltstart_model_state{" not in metrics.render().decode()
    assert "kaltstart_pool_bytes{" not in metrics.render().decode()


def test_a_pool_replica_names_only_models_it_is_ready_for() -> None:
    """A replica's report can name anything: only the models whose ready set holds it get series."""
    metrics, endpoints = two_pool_replicas()
    endpoints.set("b", [R2])
    rogue = wire.PoolModel(state="active", weight_bytes=1)
    EndpointPool("a", endpoints, budget=4).learn_report(
        R1, pool_report(rogue, rogue).model_copy(update={"models": {"a": rogue, "zz": rogue, "b": rogue}})
    )
    text = metrics.render().decode()
    assert 'model="zz"' not in text
    assert metrics.registry.get_sample_value("kaltstart_model_state", {"model": "b", "state": "active"}) == 1  # R2's
