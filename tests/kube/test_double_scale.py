"""The deployments/scale and deployments/status subresources."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kube.double import ApiDouble, manifests
from tests.kube.double.manifests import as_model

pytestmark = pytest.mark.kubernetes


async def _deployment(kube_client: client.ApiClient, name: str = "llama", replicas: int = 0) -> client.AppsV1Api:
    apps = client.AppsV1Api(kube_client)
    await apps.create_namespaced_deployment("default", as_model(manifests.deployment(name, replicas)))
    return apps


async def test_read_scale_reflects_the_deployment(kube_client: client.ApiClient) -> None:
    apps = await _deployment(kube_client, replicas=0)
    deployment = await apps.read_namespaced_deployment("llama", "default")

    scale = await apps.read_namespaced_deployment_scale("llama", "default")

    assert (scale.api_version, scale.kind) == ("autoscaling/v1", "Scale")
    assert scale.metadata.uid == deployment.metadata.uid
    assert scale.metadata.resource_version == deployment.metadata.resource_version
    assert scale.spec.replicas is None  # omitempty: a real server leaves out replicas: 0 here too
    assert (scale.status.replicas, scale.status.selector) == (0, "app=llama")


async def test_replace_scale_changes_spec_replicas(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.kubelet.hold_pending("llama")  # this test is about the API, not pods
    apps = await _deployment(kube_client)
    scale = await apps.read_namespaced_deployment_scale("llama", "default")
    scale.spec.replicas = 2

    replaced = await apps.replace_namespaced_deployment_scale("llama", "default", scale)
    deployment = await apps.read_namespaced_deployment("llama", "default")

    assert replaced.spec.replicas == 2
    assert deployment.spec.replicas == 2
    assert deployment.metadata.generation == 2


async def test_patch_scale_changes_spec_replicas(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.kubelet.hold_pending("llama")
    apps = await _deployment(kube_client)

    patched = await apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 3}})

    assert patched.spec.replicas == 3
    assert (await apps.read_namespaced_deployment("llama", "default")).spec.replicas == 3


async def test_scale_with_a_stale_resource_version_is_409(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.kubelet.hold_pending("llama")
    apps = await _deployment(kube_client)
    stale = await apps.read_namespaced_deployment_scale("llama", "default")
    await apps.patch_namespaced_deployment("llama", "default", {"metadata": {"labels": {"touched": "yes"}}})
    stale.spec.replicas = 1

    with pytest.raises(ApiException) as replaced:
        await apps.replace_namespaced_deployment_scale("llama", "default", stale)
    with pytest.raises(ApiException) as patched:
        precondition = {"metadata": {"resourceVersion": stale.metadata.resource_version}, "spec": {"replicas": 1}}
        await apps.patch_namespaced_deployment_scale("llama", "default", precondition)

    assert (replaced.value.status, patched.value.status) == (409, 409)
    assert (await apps.read_namespaced_deployment("llama", "default")).spec.replicas == 0


async def test_fail_next_on_scale_lets_a_client_retry(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    api_double.kubelet.hold_pending("llama")
    apps = await _deployment(kube_client)
    api_double.fail_next("patch", "deployments/scale", status=409)

    with pytest.raises(ApiException) as raised:
        await apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 1}})
    retried = await apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 1}})

    assert raised.value.status == 409
    assert retried.spec.replicas == 1
    assert len(api_double.requests_for("patch", "deployments/scale")) == 2


async def test_negative_replicas_are_422(kube_client: client.ApiClient) -> None:
    apps = await _deployment(kube_client)
    with pytest.raises(ApiException) as raised:
        await apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": -1}})
    assert raised.value.status == 422


async def test_status_is_written_only_through_its_subresource(kube_client: client.ApiClient) -> None:
    apps = await _deployment(kube_client)

    ignored = await apps.patch_namespaced_deployment("llama", "default", {"status": {"collisionCount": 7}})
    written = await apps.patch_namespaced_deployment_status(
        "llama", "default", {"status": {"collisionCount": 7}, "spec": {"replicas": 9}}
    )

    assert ignored.status.collision_count is None
    assert written.status.collision_count == 7
    assert written.spec.replicas == 0
