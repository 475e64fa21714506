"""The Grafana dashboard's queries, evaluated with real PromQL (``promtool``) on what two real gateway replicas
export: both serve one Redis and one (double) Kubernetes API, one model has run requests, and another has requests
waiting for a replica that never gets ready. The global per-model gauges must read the real depth, not twice it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.queue.stream import RequestQueue
from tests.chart.promql import run_rule_tests, series
from tests.chart.rendering import CHART_DIR, render
from tests.chart.test_alert_rules import RELEASE, alert_rules
from tests.harness import KubernetesGateway, eventually, run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment, runtime_pods

pytestmark = pytest.mark.kubernetes

DASHBOARD = CHART_DIR / "dashboards" / "kaltstart.json"
#: Requests left waiting for the model whose replica never gets ready, per gateway replica.
WAITING = {"a": 3, "b": 2}
#: KALTSTART_MAX_QUEUE of both: 5 waiting are over 80 % of it (KaltstartQueueNearCap).
QUEUE_CAP = 6
#: Grafana's variables, as the queries are evaluated here (at 10m, on series constant since 0m).
VARIABLES = {"$model": ".*", "$__rate_interval": "5m", "$__range": "10m"}
EVAL_TIME = "10m"

#: What the global gauges read: the real values, once (not once per gateway replica).
EXACT: dict[tuple[str, str], list[tuple[dict[str, str], float]]] = {
    ("Queue depth and in flight", "A"): [({"model": "echo"}, 0), ({"model": "stuck"}, sum(WAITING.values()))],
    ("Queue depth and in flight", "B"): [({"model": "echo"}, 0), ({"model": "stuck"}, 0)],
    ("Replicas", "A"): [
        ({"model": "echo", "state": "desired"}, 1),
        ({"model": "echo", "state": "ready"}, 1),
        ({"model": "stuck", "state": "desired"}, 1),
        ({"model": "stuck", "state": "ready"}, 0),
    ],
}
#: Panels with no series in this scenario: pools (none here), 5xx (none answered), the adaptive keep-alive (off).
EMPTY = {
    ("5xx errors", "A"),
    ("Pool models by state (replicas)", "A"),
    ("Pool moves per second (load, wake, park, unload)", "A"),
    ("Pool move duration (mean)", "A"),
    ("Pool memory (used, budget)", "A"),
    ("Pool memory (used, budget)", "B"),
    ("GPU replica-seconds and what the keep-alive did (over the range)", "B"),
    ("GPU replica-seconds and what the keep-alive did (over the range)", "C"),
}


def targets() -> dict[tuple[str, str], str]:
    """Every panel's queries by (panel title, refId), with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[tuple[str, str], str] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found[(panel["title"], target["refId"])] = expr
    return found


def input_series(scrapes: dict[str, str]) -> list[dict[str, str]]:
    """Every sample of each gateway replica's scrape as a series constant from 0m, labelled as the ServiceMonitor's
    scrape labels it (this release's job and namespace, the replica's instance and pod)."""
    found = []
    for instance, text in scrapes.items():
        scraped = {**RELEASE, "instance": instance, "pod": f"kaltstart-gateway-{instance}"}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = {**sample.labels, **scraped}
                found.append({"series": series(sample.name, labels), "values": f"{sample.value:.9f}x20"})
    return found


def samples(expected: list[tuple[dict[str, str], float]]) -> list[dict[str, Any]]:
    return [{"labels": series("", labels), "value": value} for labels, value in expected]


def expr_tests(queries: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Per query: its exact values (the global gauges), nothing (no data here), or else one or more series and
    none per gateway replica (no ``instance`` label left: all of them in one group of ``count by (instance)``)."""
    tests = []
    for key, expr in queries.items():
        if key in EXACT:
            tests.append({"expr": expr, "eval_time": EVAL_TIME, "exp_samples": samples(EXACT[key])})
        elif key in EMPTY:
            tests.append({"expr": expr, "eval_time": EVAL_TIME, "exp_samples": []})
        else:
            tests.append({"expr": f"count(count by (instance) ({expr}))", "eval_time": EVAL_TIME,
                          "exp_samples": samples([({}, 1)])})  # fmt: skip
    # What the queue-depth panel read before: the sum over both replicas, twice the real depth.
    doubled = 'sum by (model) (kaltstart_queue_depth{model="stuck"})'
    tests.append({"expr": doubled, "eval_time": EVAL_TIME, "exp_samples": samples([({"model": "stuck"}, 10)])})
    return tests


@contextlib.asynccontextmanager
async def waiting(http: httpx.AsyncClient, gw: KubernetesGateway, count: int) -> AsyncIterator[None]:
    """``count`` requests for the stuck model through ``gw``, waiting for the whole block; cancelled after."""
    body = {"model": "stuck", "prompt": "wait", "max_tokens": 2}
    tasks = [asyncio.create_task(http.post(gw.url + "/v1/completions", json=body)) for _ in range(count)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_every_panel_is_in_a_table_or_checked_by_default() -> None:
    queries = targets()
    assert set(EXACT) | EMPTY <= set(queries)
    assert len(queries) == len(set(queries))  # (title, refId) names each query once


async def test_every_panel_reads_two_gateway_replicas_right(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, tmp_path: Path, chart: helm_python.Chart
) -> None:
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache")  # the echo engine: no weights to load
    api_double.create(model_deployment("echo", "echo"))
    api_double.create(model_deployment("stuck", "stuck"))
    api_double.kubelet.hold_pending("stuck")  # its pods never leave Pending: it never gets a ready replica
    settings: dict[str, Any] = {"scale_interval_s": 0.1, "max_queue_per_model": QUEUE_CAP}
    async with (
        httpx.AsyncClient(timeout=60) as http,
        run_kubernetes_gateway(kubeconfig, redis_url, **settings) as a,
        run_kubernetes_gateway(kubeconfig, redis_url, **settings) as b,
    ):
        echo = {"model": "echo", "prompt": "hello", "max_tokens": 2}
        answered = await asyncio.gather(
            http.post(a.url + "/v1/completions", json=echo),
            http.post(b.url + "/v1/completions", json=echo | {"stream": True}),
        )
        assert [r.status_code for r in answered] == [200, 200]
        async with waiting(http, a, WAITING["a"]), waiting(http, b, WAITING["b"]):
            await eventually(
                lambda: all(
                    gw.metric("kaltstart_queue_depth", model="stuck") == sum(WAITING.values())
                    and gw.metric("kaltstart_replicas", model="stuck", state="desired") == 1
                    and gw.metric("kaltstart_replicas", model="echo", state="ready") == 1
                    for gw in (a, b)
                ),
                timeout_s=20,
            )
            redis = Redis.from_url(redis_url)
            loads = await RequestQueue(redis=redis, max_queue_per_model=QUEUE_CAP).loads(["stuck"])
            await redis.aclose()
            assert loads["stuck"].queued == sum(WAITING.values())  # the real depth, in Redis
            scrapes = {name: (await http.get(gw.url + "/metrics")).text for name, gw in (("a", a), ("b", b))}

    groups = render(chart, {"monitoring": {"prometheusRule": {"enabled": True}}}).get("PrometheusRule", "kaltstart")[
        "spec"
    ]["groups"]
    near_cap = alert_rules(groups)["KaltstartQueueNearCap"]
    test = {
        "interval": "1m",
        "input_series": input_series(scrapes),
        "promql_expr_test": expr_tests(targets()),
        # The alert on the same scrapes: one alert for the model (5 of 6, not 10), none for the other.
        "alert_rule_test": [
            {
                "eval_time": EVAL_TIME,
                "alertname": "KaltstartQueueNearCap",
                "exp_alerts": [
                    {
                        "exp_labels": {"namespace": RELEASE["namespace"], "model": "stuck", **near_cap["labels"]},
                        "exp_annotations": {
                            key: text.replace("{{ $labels.model }}", "stuck").replace("{{ $value }}", "5")
                            for key, text in near_cap["annotations"].items()
                        },
                    }
                ],
            }
        ],
    }
    (tmp_path / "promtool").mkdir()
    run_rule_tests(tmp_path / "promtool", groups, [test])
