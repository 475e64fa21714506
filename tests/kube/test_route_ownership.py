"""Abuse of routes by a Deployment author in a served namespace, against the API double and a real gateway: a
takeover of a served model name, before and after a gateway restart; the route allow-list; a forged EndpointSlice;
a misspelled annotation. Each ends with the traffic where the operator meant it, and an Event on the offender."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client

from gateway.backends.kubernetes import index
from tests.harness import KubernetesGateway, run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment, runtime_pods

pytestmark = [pytest.mark.kubernetes, pytest.mark.security]

FAST: dict[str, Any] = {"scale_interval_s": 0.1}
SERVED = "models,dev"
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def in_namespace(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    manifest["metadata"]["namespace"] = namespace
    return manifest


def body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "whose pods are these", "max_tokens": 4, "temperature": 0}


def owner(gw: KubernetesGateway, model: str) -> str | None:
    route = gw.backend._table.routes.get(model)
    return None if route is None else str(route.deployment)


async def wait_owner(gw: KubernetesGateway, model: str, expected: str | None, timeout_s: float = 10) -> None:
    changed = asyncio.Event()
    gw.catalog.subscribe(changed.set)
    async with asyncio.timeout(timeout_s):
        while owner(gw, model) != expected:
            changed.clear()
            await changed.wait()


def events_on(api: ApiDouble, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in api.objects("v1", "Event", namespace) if e["involvedObject"]["name"] == name]


def replicas(api: ApiDouble, namespace: str, name: str) -> int:
    found = api.find("apps/v1", "Deployment", namespace, name)
    assert found is not None
    count: int = found["spec"]["replicas"]
    return count


def conflicts(gw: KubernetesGateway, model: str, reason: str = "route_conflict") -> float:
    return gw.metric("kaltstart_route_conflicts_total", model=model, reason=reason)


@pytest.fixture
def echo_pods(api_double: ApiDouble, tmp_path: Path) -> None:
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def test_a_takeover_attempt_leaves_the_route_with_its_owner_also_after_a_restart(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient, echo_pods: None,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    api_double.store.clock = lambda: EPOCH
    api_double.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as gw:
        await wait_owner(gw, "llama-70b", "models/llama")

        # dev/aaa sorts before models/llama, which was the whole rule before.
        api_double.store.clock = lambda: EPOCH + timedelta(days=30)
        api_double.create(in_namespace(model_deployment("aaa", "llama-70b"), "dev"))
        [event] = await api_double.wait_for(lambda: events_on(api_double, "dev", "aaa"), 10, "an Event on dev/aaa")

        assert (event["type"], event["reason"]) == ("Warning", "RouteConflict")
        assert "'llama-70b' is served by models/llama" in event["message"]
        assert conflicts(gw, "llama-70b") == 1
        assert owner(gw, "llama-70b") == "models/llama"
        assert (await http.post(gw.url + "/v1/completions", json=body("llama-70b"))).status_code == 200
        assert (replicas(api_double, "models", "llama"), replicas(api_double, "dev", "aaa")) == (1, 0)

        # A restarted gateway (or another replica) sees both at once: the older Deployment still wins.
        async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as fresh:
            assert owner(fresh, "llama-70b") == "models/llama"
            assert conflicts(fresh, "llama-70b") == 1
            assert (await http.post(fresh.url + "/v1/completions", json=body("llama-70b"))).status_code == 200
        assert (replicas(api_double, "models", "llama"), replicas(api_double, "dev", "aaa")) == (1, 0)

        # The owner drops the name: the claimant gets it, on the running gateway, with no restart.
        apps = client.AppsV1Api(kube_client)
        patch = {"metadata": {"annotations": {"kaltstart.dev/models": "llama-405b"}}}
        await apps.patch_namespaced_deployment("llama", "models", patch)
        await wait_owner(gw, "llama-70b", "dev/aaa")
        assert owner(gw, "llama-405b") == "models/llama"
    assert events_on(api_double, "models", "llama") == []  # the owner was never told it lost anything


async def test_the_allow_list_keeps_a_model_from_any_other_deployment(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str
) -> None:
    # The impostor is older and nobody serves the name yet: without the list it would win.
    api_double.create(in_namespace(model_deployment("aaa", "llama-70b"), "dev"))
    allow = {"llama-70b": ("models/llama",)}
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, allow=allow, **FAST) as gw:
        [event] = await api_double.wait_for(lambda: events_on(api_double, "dev", "aaa"), 10, "an Event on dev/aaa")
        assert event["reason"] == "RouteNotAllowed"
        assert "may be served only by models/llama" in event["message"]
        assert owner(gw, "llama-70b") is None
        assert conflicts(gw, "llama-70b", "route_not_allowed") == 1

        api_double.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))
        await wait_owner(gw, "llama-70b", "models/llama")


def forged_slice(service: str, port: int, managed_by: str | None) -> dict[str, Any]:
    labels = {index.SERVICE_NAME_LABEL: service}
    if managed_by is not None:
        labels[index.MANAGED_BY_LABEL] = managed_by
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{port}", "namespace": "models", "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


async def test_an_endpointslice_not_from_the_controller_is_ignored(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str
) -> None:
    api_double.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as gw:
        await wait_owner(gw, "llama-70b", "models/llama")
        published = asyncio.Event()
        gw.endpoints.subscribe(lambda model: published.set() if gw.endpoints.get(model) else None)

        api_double.create(forged_slice("llama", 40001, managed_by=None))
        api_double.create(forged_slice("llama", 40002, managed_by="someone-else"))
        # Written after the forged ones, so once the gateway has it, it has seen them too (one ordered watch).
        api_double.create(forged_slice("llama", 40003, managed_by=index.SLICE_CONTROLLER))
        await asyncio.wait_for(published.wait(), 10)

        assert gw.endpoints.get("llama-70b") == ("http://127.0.0.1:40003",)
        assert gw.metric("kaltstart_endpointslices_ignored_total") == 2


async def test_a_misspelled_annotation_is_reported_not_ignored(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, http: httpx.AsyncClient
) -> None:
    api_double.create(in_namespace(model_deployment("llama", "llama-70b", max_replica="4"), "models"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as gw:
        [event] = await api_double.wait_for(
            lambda: events_on(api_double, "models", "llama"), 10, "an Event on models/llama"
        )
        assert (event["type"], event["reason"]) == ("Warning", "InvalidAnnotation")
        assert "kaltstart.dev/max-replica" in event["message"] and "kaltstart.dev/max-replicas" in event["message"]
        assert (await http.post(gw.url + "/v1/completions", json=body("llama-70b"))).status_code == 404
