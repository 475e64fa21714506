"""The fake controller + kubelet: Deployments become real processes, EndpointSlices and statuses."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client

from tests.kube.double import ApiDouble, KubeletSettings, default_command, manifests, tiny_pod_command
from tests.kube.double.commands import TINY_POD

pytestmark = pytest.mark.kubernetes
DEADLINE_S = 10.0


def _slices(api: ApiDouble, service: str) -> list[dict[str, Any]]:
    return api.objects("discovery.k8s.io/v1", "EndpointSlice", "default", f"kubernetes.io/service-name={service}")


def _ready_endpoints(api: ApiDouble, service: str, pod: str | None = None) -> list[tuple[str, int]]:
    """(address, port) of every ready endpoint of the service (of one pod, if named)."""
    return [
        (endpoint["addresses"][0], endpoint_slice["ports"][0]["port"])
        for endpoint_slice in _slices(api, service)
        for endpoint in endpoint_slice["endpoints"]
        if endpoint["conditions"]["ready"] and pod in (None, endpoint["targetRef"]["name"])
    ]


def _pods(api: ApiDouble, app: str) -> list[dict[str, Any]]:
    return api.objects("v1", "Pod", "default", f"app={app}")


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def _get(address: str, port: int, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        return await http.get(f"http://{address}:{port}{path}")


async def _scale(kube_client: client.ApiClient, name: str, replicas: int) -> None:
    patch = {"spec": {"replicas": replicas}}
    await client.AppsV1Api(kube_client).patch_namespaced_deployment_scale(name, "default", patch)


async def _wait_ready(api: ApiDouble, service: str, count: int) -> list[tuple[str, int]]:
    def ready() -> list[tuple[str, int]] | None:
        found = _ready_endpoints(api, service)
        return found if len(found) == count else None

    return await api.wait_for(ready, DEADLINE_S, f"{count} ready endpoints of {service}")


async def _wait_pods(api: ApiDouble, app: str, count: int) -> list[dict[str, Any]]:
    def counted() -> list[dict[str, Any]] | None:
        pods = _pods(api, app)
        return pods if len(pods) == count else None

    return await api.wait_for(counted, DEADLINE_S, f"{count} pods of {app}")


async def test_scale_from_zero_runs_a_real_process_published_in_an_endpoint_slice(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    api_double.create(manifests.deployment("llama"))

    await _scale(kube_client, "llama", 1)
    [(address, port)] = await _wait_ready(api_double, "llama", 1)
    response = await _get(address, port)
    [pod] = _pods(api_double, "llama")
    [endpoint_slice] = _slices(api_double, "llama")
    deployment = await client.AppsV1Api(kube_client).read_namespaced_deployment("llama", "default")

    assert response.json() == {"pod": pod["metadata"]["name"], "port": port}
    assert pod["status"]["phase"] == "Running" and _is_ready(pod)
    assert endpoint_slice["metadata"]["name"].startswith("llama-")
    assert endpoint_slice["ports"] == [{"name": "http", "port": port, "protocol": "TCP"}]
    assert endpoint_slice["endpoints"][0]["targetRef"]["name"] == pod["metadata"]["name"]
    assert (deployment.status.ready_replicas, deployment.status.available_replicas) == (1, 1)
    assert deployment.status.observed_generation == deployment.metadata.generation


async def test_scale_to_zero_stops_the_process_and_clears_the_slice(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    api_double.create(manifests.deployment("llama", 1))
    [(address, port)] = await _wait_ready(api_double, "llama", 1)

    await _scale(kube_client, "llama", 0)
    await api_double.wait_for(
        lambda: not _pods(api_double, "llama") and not _slices(api_double, "llama"), DEADLINE_S, "pods gone"
    )
    deployment = await client.AppsV1Api(kube_client).read_namespaced_deployment("llama", "default")

    with pytest.raises(httpx.ConnectError):
        await _get(address, port)
    assert deployment.status.replicas is None  # omitempty, as from a real server
    assert deployment.status.ready_replicas is None


async def test_hold_pending_keeps_new_pods_pending_until_released(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    gate = api_double.kubelet.hold_pending("llama")
    api_double.create(manifests.deployment("llama"))

    await _scale(kube_client, "llama", 1)
    [pod] = await _wait_pods(api_double, "llama", 1)
    deployment = api_double.find("apps/v1", "Deployment", "default", "llama")

    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert _slices(api_double, "llama") == []
    assert deployment is not None
    assert deployment["status"]["replicas"] == 1 and "readyReplicas" not in deployment["status"]

    gate.set()
    await _wait_ready(api_double, "llama", 1)


async def test_hold_pending_for_seconds(api_double: ApiDouble) -> None:
    loop = asyncio.get_running_loop()
    api_double.kubelet.hold_pending("llama", 0.5)
    started = loop.time()

    api_double.create(manifests.deployment("llama", 1))
    await _wait_ready(api_double, "llama", 1)

    assert loop.time() - started >= 0.5


async def test_a_killed_pod_is_restarted_in_place(api_double: ApiDouble) -> None:
    api_double.create(manifests.deployment("llama", 1))
    [(address, port)] = await _wait_ready(api_double, "llama", 1)
    [pod] = _pods(api_double, "llama")
    name = pod["metadata"]["name"]

    api_double.kubelet.kill_pod(name)
    restarted = await api_double.wait_for(
        lambda: [p for p in _pods(api_double, "llama") if p["status"]["containerStatuses"][0]["restartCount"] == 1],
        DEADLINE_S,
        "the container to restart",
    )
    assert restarted[0]["metadata"]["name"] == name
    assert await _wait_ready(api_double, "llama", 1) == [(address, port)]
    assert (await _get(address, port)).status_code == 200


async def test_a_deleted_pod_is_replaced_by_a_new_one(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.create(manifests.deployment("llama", 1))
    await _wait_ready(api_double, "llama", 1)
    [old] = _pods(api_double, "llama")

    await client.CoreV1Api(kube_client).delete_namespaced_pod(old["metadata"]["name"], "default")
    [new] = await api_double.wait_for(
        lambda: [p for p in _pods(api_double, "llama") if p["metadata"]["name"] != old["metadata"]["name"]],
        DEADLINE_S,
        "a replacement pod",
    )
    [(address, port)] = await api_double.wait_for(
        lambda: _ready_endpoints(api_double, "llama", new["metadata"]["name"]), DEADLINE_S, "it to be ready"
    )

    assert (await _get(address, port)).status_code == 200


async def test_scale_down_stops_the_newest_pod(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.create(manifests.deployment("llama", 1))
    await _wait_ready(api_double, "llama", 1)
    [oldest] = _pods(api_double, "llama")
    await _scale(kube_client, "llama", 2)
    await _wait_ready(api_double, "llama", 2)

    await _scale(kube_client, "llama", 1)
    [survivor] = await _wait_pods(api_double, "llama", 1)

    assert survivor["metadata"]["name"] == oldest["metadata"]["name"]


async def test_an_unready_pod_leaves_the_ready_endpoints(api_double: ApiDouble) -> None:
    api_double.create(manifests.deployment("llama", 1))
    [(address, port)] = await _wait_ready(api_double, "llama", 1)

    async with httpx.AsyncClient(trust_env=False) as http:
        await http.post(f"http://{address}:{port}/unready")
    await api_double.wait_for(lambda: not _ready_endpoints(api_double, "llama"), DEADLINE_S, "endpoint unready")
    deployment = api_double.find("apps/v1", "Deployment", "default", "llama")

    assert deployment is not None and "readyReplicas" not in deployment["status"]


async def test_a_selecting_service_names_the_slice(api_double: ApiDouble) -> None:
    api_double.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "llama-svc"},
            "spec": {"selector": {"app": "llama"}, "ports": [{"name": "openai", "port": 80}]},
        }
    )
    api_double.create(manifests.deployment("llama", 1))

    [(_, port)] = await _wait_ready(api_double, "llama-svc", 1)

    assert _slices(api_double, "llama-svc")[0]["ports"][0] == {"name": "openai", "port": port, "protocol": "TCP"}


async def test_default_command_comes_from_the_container_spec_and_logs_are_served(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    api_double.kubelet.command_for = default_command
    api_double.create(manifests.deployment("llama", 1, command=[sys.executable, "-I", str(TINY_POD)]))
    await _wait_ready(api_double, "llama", 1)
    [pod] = _pods(api_double, "llama")

    log = await client.CoreV1Api(kube_client).read_namespaced_pod_log(pod["metadata"]["name"], "default")

    assert "tiny pod listening" in log


async def test_stopping_the_double_leaves_no_process_behind(kubelet_settings: KubeletSettings) -> None:
    async with ApiDouble(kubelet=kubelet_settings) as api:
        api.kubelet.command_for = tiny_pod_command
        api.create(manifests.deployment("llama", 2))
        await _wait_ready(api, "llama", 2)
        pids = [api.kubelet.runner(p["metadata"]["name"]).process for p in _pods(api, "llama")]

    for process in pids:
        assert process is not None and process.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)


async def test_deleting_a_deployment_stops_and_removes_its_pods(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    api_double.create(manifests.deployment("llama", 1))
    await _wait_ready(api_double, "llama", 1)

    await client.AppsV1Api(kube_client).delete_namespaced_deployment("llama", "default")

    await api_double.wait_for(
        lambda: not _pods(api_double, "llama") and not _slices(api_double, "llama"), DEADLINE_S, "pods gone"
    )
