"""Abuse of routes by a Deployment author in a served namespace, against the API double and a real gateway: a
takeover of a served model name, before and after a gateway restart, by a newer and by an older Deployment (the
owner recorded in Redis), with two gateways; the route allow-list; a forged EndpointSlice; a misspelled
annotation. Each ends with the traffic where the operator meant it, and an Event on the offender."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client
from redis.asyncio import Redis

from gateway.backends.kubernetes import index
from gateway.backends.kubernetes.index import RouteTable
from gateway.backends.kubernetes.owners import Claim, Owner, RedisOwners
from gateway.store import keys
from gateway.store.connection import text
from gateway.store.embedded import EmbeddedRedis
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


async def recorded(redis_url: str, model: str) -> str | None:
    """The owner of ``model`` recorded in Redis, as ``<namespace>/<name>/<uid>``."""
    redis = Redis.from_url(redis_url)
    try:
        found = await redis.hget(keys.ROUTE_OWNERS, model)
        return None if found is None else text(found)
    finally:
        await redis.aclose()


def uid(api: ApiDouble, namespace: str, name: str) -> str:
    found = api.find("apps/v1", "Deployment", namespace, name)
    assert found is not None
    return str(found["metadata"]["uid"])


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


def older_claimant_later(api: ApiDouble) -> None:
    """dev/aaa, created first, serves something else; models/llama, 30 days younger, serves llama-70b."""
    api.store.clock = lambda: EPOCH
    api.create(in_namespace(model_deployment("aaa", "aaa-model"), "dev"))
    api.store.clock = lambda: EPOCH + timedelta(days=30)
    api.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))


async def name_it(kube: client.ApiClient, namespace: str, name: str, models: str) -> None:
    patch = {"metadata": {"annotations": {"kaltstart.dev/models": models}}}
    await client.AppsV1Api(kube).patch_namespaced_deployment(name, namespace, patch)


async def test_an_older_deployment_that_starts_naming_a_served_model_does_not_win_after_a_restart(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient
) -> None:
    older_claimant_later(api_double)
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as gw:
        await wait_owner(gw, "llama-70b", "models/llama")
        assert await recorded(redis_url, "llama-70b") == f"models/llama/{uid(api_double, 'models', 'llama')}"

        await name_it(kube_client, "dev", "aaa", "llama-70b")  # older than the owner: it won every restart
        [event] = await api_double.wait_for(lambda: events_on(api_double, "dev", "aaa"), 10, "an Event on dev/aaa")
        assert event["reason"] == "RouteConflict"
        assert owner(gw, "llama-70b") == "models/llama"

    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as restarted:
        assert owner(restarted, "llama-70b") == "models/llama"
        assert conflicts(restarted, "llama-70b") == 1
        await restarted.backend.owners_recorded()
    assert await recorded(redis_url, "llama-70b") == f"models/llama/{uid(api_double, 'models', 'llama')}"
    assert events_on(api_double, "models", "llama") == []


async def test_two_gateways_keep_the_recorded_owner_and_hand_the_name_on_together(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient
) -> None:
    older_claimant_later(api_double)
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as first:
        await wait_owner(first, "llama-70b", "models/llama")
        await name_it(kube_client, "dev", "aaa", "llama-70b")
        await api_double.wait_for(lambda: events_on(api_double, "dev", "aaa"), 10, "an Event on dev/aaa")

        async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as second:  # a new replica
            assert [owner(gw, "llama-70b") for gw in (first, second)] == ["models/llama"] * 2

            # The owner drops the name: both gateways release its record (only one deletes it) and claim it for
            # dev/aaa (only one sets it; the other finds the same owner there).
            await name_it(kube_client, "models", "llama", "llama-405b")
            for gw in (first, second):
                await wait_owner(gw, "llama-70b", "dev/aaa")
                await gw.backend.owners_recorded()
            assert await recorded(redis_url, "llama-70b") == f"dev/aaa/{uid(api_double, 'dev', 'aaa')}"
            assert await recorded(redis_url, "llama-405b") == f"models/llama/{uid(api_double, 'models', 'llama')}"
            assert await recorded(redis_url, "aaa-model") is None  # dropped by dev/aaa, so released


async def test_a_deployment_recreated_while_no_gateway_runs_is_a_new_claimant(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient
) -> None:
    """A running gateway hands the name on when its owner is deleted; a restarted one, which never saw the
    deletion, does the same: the record names the old object (uid), which claims nothing any more."""
    older_claimant_later(api_double)
    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as gw:
        await wait_owner(gw, "llama-70b", "models/llama")
        await name_it(kube_client, "dev", "aaa", "llama-70b")
        await api_double.wait_for(lambda: events_on(api_double, "dev", "aaa"), 10, "an Event on dev/aaa")
    old_uid = uid(api_double, "models", "llama")

    await client.AppsV1Api(kube_client).delete_namespaced_deployment("llama", "models")
    await api_double.wait_for(
        lambda: api_double.find("apps/v1", "Deployment", "models", "llama") is None, 10, "models/llama deleted"
    )
    api_double.store.clock = lambda: EPOCH + timedelta(days=60)
    api_double.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))
    assert uid(api_double, "models", "llama") != old_uid

    async with run_kubernetes_gateway(kubeconfig, redis_url, SERVED, **FAST) as restarted:
        assert owner(restarted, "llama-70b") == "dev/aaa"
        await restarted.backend.owners_recorded()
    assert await recorded(redis_url, "llama-70b") == f"dev/aaa/{uid(api_double, 'dev', 'aaa')}"


@pytest.fixture
def owners_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of its own for the owners' records, to stop and start under a running gateway."""
    server = EmbeddedRedis(persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_while_redis_is_down_routes_are_decided_in_memory_then_reconciled_with_the_records(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, owners_redis: EmbeddedRedis
) -> None:
    """A gateway that cannot read the records starts anyway, deciding by age (here: the older dev/aaa); once Redis
    answers, the name moves to its recorded owner, whom the rest of the fleet serves."""
    api_double.store.clock = lambda: EPOCH
    api_double.create(in_namespace(model_deployment("aaa", "llama-70b"), "dev"))
    api_double.store.clock = lambda: EPOCH + timedelta(days=30)
    api_double.create(in_namespace(model_deployment("llama", "llama-70b"), "models"))
    llama = f"models/llama/{uid(api_double, 'models', 'llama')}"
    redis = Redis.from_url(owners_redis.url)
    await redis.hset(keys.ROUTE_OWNERS, "llama-70b", llama)
    await redis.aclose()
    owners_redis.kill()

    async with run_kubernetes_gateway(
        kubeconfig, redis_url, SERVED, owners_url=owners_redis.url, redis_timeout_s=0.5, **FAST
    ) as gw:
        assert owner(gw, "llama-70b") == "dev/aaa"

        owners_redis.start()
        await wait_owner(gw, "llama-70b", "models/llama")
        await gw.backend.owners_recorded()
        assert await recorded(owners_redis.url, "llama-70b") == llama


@pytest.mark.parametrize("first", ["a", "b"])
async def test_two_gateways_deciding_at_once_serve_whichever_was_recorded_first(redis_url: str, first: str) -> None:
    """Two gateways whose views differ for a moment (B has not seen the older dev/z yet) each claim their own
    choice: the first claim is recorded, the other gateway adopts it as soon as it sees its owner claim the name."""
    older = in_namespace(model_deployment("z", "shared"), "dev")
    older["metadata"] |= {"uid": "uid-z", "creationTimestamp": "2025-01-01T00:00:00Z"}
    newer = in_namespace(model_deployment("y", "shared"), "models")
    newer["metadata"] |= {"uid": "uid-y", "creationTimestamp": "2025-03-01T00:00:00Z"}
    tables = {"a": RouteTable(), "b": RouteTable()}
    for table in tables.values():
        table.load({})
    tables["a"].replace("dev", [older])
    tables["a"].replace("models", [newer])
    tables["b"].replace("models", [newer])
    writes = {name: table.keep_owners().writes for name, table in tables.items()}
    assert writes == {"a": [Claim("shared", Owner(index.ref_of(older), "uid-z"))],
                      "b": [Claim("shared", Owner(index.ref_of(newer), "uid-y"))]}  # fmt: skip

    store = RedisOwners(Redis.from_url(redis_url))
    try:
        second = "b" if first == "a" else "a"
        assert await store.write(writes[first]) == [writes[first][0].owner]
        [winner] = await store.write(writes[second])
        assert winner == writes[first][0].owner
        assert winner is not None
        tables[second].adopt("shared", winner, writes[second][0].owner)
        tables["b"].replace("dev", [older])  # B's view catches up

        routes = {name: str(table.routes["shared"].deployment) for name, table in tables.items()}
        assert routes == {"a": str(winner.deployment), "b": str(winner.deployment)}
        assert await store.read() == {"shared": winner}
    finally:
        await store.aclose()
