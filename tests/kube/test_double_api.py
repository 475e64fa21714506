"""Discovery, CRUD, selectors, conflicts and injected faults, through the unmodified kubernetes_asyncio client."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kube.double import ApiDouble, manifests
from tests.kube.double.manifests import as_model

pytestmark = pytest.mark.kubernetes


def _status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body or b"{}")
    return body


async def test_discovery_lists_core_and_the_groups_the_gateway_uses(kube_client: client.ApiClient) -> None:
    core = await client.CoreApi(kube_client).get_api_versions()
    core_resources = await client.CoreV1Api(kube_client).get_api_resources()
    groups = await client.ApisApi(kube_client).get_api_versions()
    apps = await client.AppsV1Api(kube_client).get_api_resources()
    version = await client.VersionApi(kube_client).get_code()

    assert core.versions == ["v1"]
    assert core_resources.group_version == "v1"
    assert {"pods", "services", "configmaps", "events", "pods/log"} <= {r.name for r in core_resources.resources}
    assert {"apps", "discovery.k8s.io", "coordination.k8s.io", "autoscaling", "events.k8s.io"} <= {
        g.name for g in groups.groups
    }
    assert apps.group_version == "apps/v1"
    scale = next(r for r in apps.resources if r.name == "deployments/scale")
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    assert version.major == "1"


async def test_create_sets_server_fields_and_get_returns_the_object(kube_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube_client)

    created = await apps.create_namespaced_deployment("default", as_model(manifests.deployment("llama", 0)))
    read = await apps.read_namespaced_deployment("llama", "default")

    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert int(created.metadata.resource_version) > 0
    assert read.metadata.uid == created.metadata.uid
    assert read.spec.replicas == 0


async def test_duplicate_create_is_409_already_exists(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("settings")))

    with pytest.raises(ApiException) as raised:
        await core.create_namespaced_config_map("default", as_model(manifests.config_map("settings")))

    assert raised.value.status == 409
    assert _status_of(raised.value)["reason"] == "AlreadyExists"


async def test_missing_object_is_404_with_a_status_body(kube_client: client.ApiClient) -> None:
    with pytest.raises(ApiException) as raised:
        await client.AppsV1Api(kube_client).read_namespaced_deployment("absent", "default")

    status = _status_of(raised.value)
    assert raised.value.status == 404
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status",
        "Failure",
        "NotFound",
        404,
    )
    assert status["message"] == 'deployments.apps "absent" not found'


async def test_list_filters_by_label_and_field_selectors(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    for name, labels in [("a", {"tier": "gpu", "model": "x"}), ("b", {"tier": "cpu"}), ("c", {"tier": "gpu"})]:
        await core.create_namespaced_config_map("default", as_model(manifests.config_map(name, labels=labels)))
    await core.create_namespaced_config_map("other", as_model(manifests.config_map("d", labels={"tier": "gpu"})))

    async def names(namespace: str | None = "default", label_selector: str = "", field_selector: str = "") -> list[str]:
        if namespace is None:
            found = await core.list_config_map_for_all_namespaces(
                label_selector=label_selector, field_selector=field_selector
            )
        else:
            found = await core.list_namespaced_config_map(
                namespace, label_selector=label_selector, field_selector=field_selector
            )
        return [item.metadata.name for item in found.items]

    assert await names(label_selector="tier=gpu") == ["a", "c"]
    assert await names(label_selector="tier!=gpu") == ["b"]
    assert await names(label_selector="tier in (cpu, tpu)") == ["b"]
    assert await names(label_selector="model") == ["a"]
    assert await names(label_selector="!model,tier=gpu") == ["c"]
    assert await names(field_selector="metadata.name=b") == ["b"]
    assert await names(None, label_selector="tier=gpu") == ["a", "c", "d"]
    assert await names(None, field_selector="metadata.namespace=other") == ["d"]


async def test_list_carries_a_resource_version_and_pages_with_limit(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    for name in ("a", "b", "c"):
        await core.create_namespaced_config_map("default", as_model(manifests.config_map(name)))

    first = await core.list_namespaced_config_map("default", limit=2)
    rest = await core.list_namespaced_config_map("default", limit=2, _continue=first.metadata._continue)

    assert int(first.metadata.resource_version) >= 3
    assert [i.metadata.name for i in first.items] == ["a", "b"]
    assert first.metadata.remaining_item_count == 1
    assert [i.metadata.name for i in rest.items] == ["c"]


async def test_replace_with_a_stale_resource_version_is_409_conflict(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    stale = await core.create_namespaced_config_map("default", as_model(manifests.config_map("cm", {"k": "1"})))
    fresh = await core.read_namespaced_config_map("cm", "default")
    fresh.data = {"k": "2"}
    await core.replace_namespaced_config_map("cm", "default", fresh)

    stale.data = {"k": "3"}
    with pytest.raises(ApiException) as raised:
        await core.replace_namespaced_config_map("cm", "default", stale)

    assert raised.value.status == 409
    assert _status_of(raised.value)["reason"] == "Conflict"
    assert (await core.read_namespaced_config_map("cm", "default")).data == {"k": "2"}


async def test_replace_of_a_missing_object_is_404(kube_client: client.ApiClient) -> None:
    with pytest.raises(ApiException) as raised:
        await client.CoreV1Api(kube_client).replace_namespaced_config_map(
            "nope", "default", as_model(manifests.config_map("nope"))
        )
    assert raised.value.status == 404


async def test_resource_version_increases_on_every_write_and_not_on_no_op(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_config_map("default", as_model(manifests.config_map("cm", {"k": "1"})))
    other = await core.create_namespaced_config_map("default", as_model(manifests.config_map("other")))
    changed = await core.patch_namespaced_config_map("cm", "default", {"data": {"k": "2"}})
    unchanged = await core.patch_namespaced_config_map("cm", "default", {"data": {"k": "2"}})

    versions = [int(o.metadata.resource_version) for o in (created, other, changed)]
    assert versions == sorted(set(versions))
    assert unchanged.metadata.resource_version == changed.metadata.resource_version


async def test_generation_counts_spec_changes_only(kube_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube_client)
    created = await apps.create_namespaced_deployment("default", as_model(manifests.deployment("m", 0)))
    labelled = await apps.patch_namespaced_deployment("m", "default", {"metadata": {"labels": {"x": "1"}}})
    paused = await apps.patch_namespaced_deployment("m", "default", {"spec": {"paused": True}})

    assert (created.metadata.generation, labelled.metadata.generation, paused.metadata.generation) == (1, 1, 2)


async def test_patch_formats_and_resource_version_precondition(kube_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube_client)
    created = await apps.create_namespaced_deployment("default", as_model(manifests.deployment("m", 0)))

    merged = await apps.patch_namespaced_deployment(
        "m", "default", {"metadata": {"annotations": {"kaltstart.io/model": "llama"}}}
    )
    json_patched = await apps.patch_namespaced_deployment(
        "m", "default", [{"op": "replace", "path": "/spec/replicas", "value": 2}]
    )
    with pytest.raises(ApiException) as raised:
        stale = {"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"replicas": 5}}
        await apps.patch_namespaced_deployment("m", "default", stale)

    assert merged.metadata.annotations == {"kaltstart.io/model": "llama"}
    assert json_patched.spec.replicas == 2
    assert raised.value.status == 409


async def test_strategic_merge_patch_merges_containers_by_name(kube_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube_client)
    await apps.create_namespaced_deployment("default", as_model(manifests.deployment("m", 0, command=["serve"])))

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "runtime:2"}]}}}}
    patched = await apps.patch_namespaced_deployment("m", "default", patch)

    container = patched.spec.template.spec.containers[0]
    assert (container.image, container.command) == ("runtime:2", ["serve"])


async def test_delete_removes_the_object(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("gone")))

    status = await core.delete_namespaced_config_map("gone", "default")

    assert status.status == "Success"
    with pytest.raises(ApiException) as raised:
        await core.read_namespaced_config_map("gone", "default")
    assert raised.value.status == 404


async def test_invalid_deployment_is_422(kube_client: client.ApiClient) -> None:
    body = manifests.deployment("m", 0)
    body["spec"]["selector"] = {"matchLabels": {"app": "other"}}

    with pytest.raises(ApiException) as raised:
        await client.AppsV1Api(kube_client).create_namespaced_deployment("default", as_model(body))

    assert raised.value.status == 422
    assert "selector" in _status_of(raised.value)["message"]


async def test_fail_next_injects_one_failure_then_recovers(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    api_double.fail_next("create", "configmaps", status=409)
    api_double.fail_next("get", "configmaps", status=503, times=2)

    with pytest.raises(ApiException) as conflict:
        await core.create_namespaced_config_map("default", as_model(manifests.config_map("cm")))
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("cm")))
    for _ in range(2):
        with pytest.raises(ApiException) as unavailable:
            await core.read_namespaced_config_map("cm", "default")
    await core.read_namespaced_config_map("cm", "default")

    assert conflict.value.status == 409
    assert unavailable.value.status == 503
    assert len(api_double.requests_for("create", "configmaps")) == 2


async def test_requests_without_the_kubeconfig_token_are_401(api_double: ApiDouble) -> None:
    async with httpx.AsyncClient(base_url=api_double.url, trust_env=False) as http:
        response = await http.get("/api/v1/namespaces/default/configmaps")
    assert response.status_code == 401
    assert response.json()["reason"] == "Unauthorized"


async def test_core_events_are_created_and_listed_by_involved_object(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    apps = client.AppsV1Api(kube_client)
    deployment = await apps.create_namespaced_deployment("default", as_model(manifests.deployment("llama", 0)))
    involved = client.V1ObjectReference(
        kind="Deployment", name="llama", namespace="default", uid=deployment.metadata.uid, api_version="apps/v1"
    )
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="llama."),
        involved_object=involved,
        reason="ScaledFromZero",
        message="first request queued",
        type="Normal",
        source=client.V1EventSource(component="kaltstart-gateway"),
    )

    await core.create_namespaced_event("default", event)
    found = await core.list_namespaced_event("default", field_selector="involvedObject.name=llama")

    assert [(e.reason, e.involved_object.kind) for e in found.items] == [("ScaledFromZero", "Deployment")]


async def test_events_v1_require_their_fields_and_are_listed(kube_client: client.ApiClient) -> None:
    events = client.EventsV1Api(kube_client)
    regarding = {"kind": "Deployment", "name": "llama", "namespace": "default"}
    event = {
        "metadata": {"generateName": "llama."},
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": "kaltstart.io/gateway",
        "reportingInstance": "gateway-0",
        "action": "Scale",
        "reason": "ScaledFromZero",
        "regarding": regarding,
        "type": "Normal",
        "note": "first request queued",
    }

    await events.create_namespaced_event("default", as_model(event))
    found = await events.list_namespaced_event("default", field_selector="regarding.name=llama")
    with pytest.raises(ApiException) as raised:
        await events.create_namespaced_event("default", as_model({**event, "reportingController": None}))

    assert [(e.reason, e.note) for e in found.items] == [("ScaledFromZero", "first request queued")]
    assert raised.value.status == 422


async def test_methods_a_path_does_not_take_are_405(api_double: ApiDouble) -> None:
    headers = {"Authorization": f"Bearer {api_double.token}"}
    async with httpx.AsyncClient(base_url=api_double.url, headers=headers, trust_env=False) as http:
        put_collection = await http.put("/api/v1/namespaces/default/configmaps", json={})
        post_object = await http.post("/api/v1/namespaces/default/configmaps/x", json={})
        put_log = await http.put("/api/v1/namespaces/default/pods/x/log", json={})

    assert [r.status_code for r in (put_collection, post_object, put_log)] == [405, 405, 405]
