"""What a Helm install needs from the double: OpenAPI v3 documents, server-side apply, and the extra kinds."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes_asyncio import client

from tests.kube.double import ApiDouble, manifests
from tests.kube.double.resources import RESOURCES

pytestmark = pytest.mark.kubernetes

APPLY = {"Content-Type": "application/apply-patch+yaml"}
CM_PATH = "/api/v1/namespaces/default/configmaps/settings"


@pytest.fixture
async def http(api_double: ApiDouble) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {api_double.token}"}
    async with httpx.AsyncClient(base_url=api_double.url, headers=headers, trust_env=False) as c:
        yield c


def config_map(**data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": data}


async def apply(http: httpx.AsyncClient, path: str, body: dict[str, Any], **query: str) -> httpx.Response:
    params = {"fieldManager": "helm", **query}
    return await http.patch(path, params=params, content=yaml.safe_dump(body), headers=APPLY)


async def test_openapi_v3_index_and_documents_cover_every_kind(http: httpx.AsyncClient) -> None:
    index = (await http.get("/openapi/v3")).json()["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1", "apis/policy/v1"} <= set(index)
    kinds: set[tuple[str, str, str]] = set()
    for entry in index.values():
        document = (await http.get(entry["serverRelativeURL"])).json()
        assert document["openapi"].startswith("3.")
        for schema in document["components"]["schemas"].values():
            kinds |= {(g["group"], g["version"], g["kind"]) for g in schema.get("x-kubernetes-group-version-kind", [])}
        for operations in document["paths"].values():
            parameters = {p["name"] for p in operations["patch"]["parameters"]}
            assert {"fieldManager", "fieldValidation", "force"} <= parameters
    assert kinds == {(rt.group, rt.version, rt.kind) for rt in RESOURCES}
    assert (await http.get("/openapi/v3/apis/nothing.example.com/v1")).status_code == 404


async def test_apply_creates_then_merges_and_records_the_manager(http: httpx.AsyncClient) -> None:
    created = await apply(http, CM_PATH, config_map(a="1"))
    assert created.status_code == 201, created.text
    (entry,) = created.json()["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("helm", "Apply")
    assert entry["fieldsV1"] == {"f:data": {"f:a": {}}}

    merged = await apply(http, CM_PATH, config_map(a="1", b="2"))
    assert merged.status_code == 200
    assert merged.json()["data"] == {"a": "1", "b": "2"}
    assert int(merged.json()["metadata"]["resourceVersion"]) > int(created.json()["metadata"]["resourceVersion"])

    again = await apply(http, CM_PATH, config_map(a="1", b="2"))
    assert again.json()["metadata"]["resourceVersion"] == merged.json()["metadata"]["resourceVersion"]
    assert len(again.json()["metadata"]["managedFields"]) == 1

    dropped = await apply(http, CM_PATH, config_map(b="2"))  # a field the manager applied before, left out
    assert dropped.json()["data"] == {"b": "2"}


async def test_apply_leaves_fields_another_manager_owns_and_conflicts_on_them(http: httpx.AsyncClient) -> None:
    await apply(http, CM_PATH, config_map(a="1", b="2"))
    # Another manager changes "a" with an ordinary write: it owns "a" now, and the applier no longer does.
    patched = await http.patch(
        CM_PATH, json={"data": {"a": "9"}}, headers={"Content-Type": "application/merge-patch+json"},
        params={"fieldManager": "scaler"},
    )  # fmt: skip
    owners = {e["manager"]: e["fieldsV1"] for e in patched.json()["metadata"]["managedFields"]}
    assert owners == {"helm": {"f:data": {"f:b": {}}}, "scaler": {"f:data": {"f:a": {}}}}

    kept = await apply(http, CM_PATH, config_map(b="2"))  # leaving "a" out: it is the scaler's, and stays
    assert kept.json()["data"] == {"a": "9", "b": "2"}
    conflict = await apply(http, CM_PATH, config_map(a="1", b="2"))  # taking it back: refused...
    assert conflict.status_code == 409
    assert conflict.json()["reason"] == "Conflict" and '"scaler": .data.a' in conflict.json()["message"]
    same = await apply(http, CM_PATH, config_map(a="9", b="2"))  # ...unless the value is the same (co-owned)
    assert same.status_code == 200
    forced = await apply(http, CM_PATH, config_map(a="1", b="2"), force="true")  # or forced
    assert forced.json()["data"] == {"a": "1", "b": "2"}
    assert [e["manager"] for e in forced.json()["metadata"]["managedFields"]] == ["helm"]


async def test_a_scale_write_takes_replicas_from_the_applier(api_double: ApiDouble, http: httpx.AsyncClient) -> None:
    """As on a real server: replicas the applier alone owns fall back to the default (1) when it leaves them out;
    once the scale subresource has changed them, they are the scaler's and stay."""
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    body = manifests.deployment("web", replicas=0)
    assert (await apply(http, path, body)).status_code == 201
    without = copy.deepcopy(body)
    del without["spec"]["replicas"]
    assert (await apply(http, path, without)).json()["spec"]["replicas"] == 1

    assert (await apply(http, path, body)).json()["spec"]["replicas"] == 0
    scaled = await http.put(
        path + "/scale", json={"spec": {"replicas": 2}, "metadata": {"name": "web"}},
        headers={"User-Agent": "OpenAPI-Generator/31.1.0/python"},
    )  # fmt: skip
    assert scaled.status_code == 200, scaled.text
    deployment = (await apply(http, path, without)).json()
    assert deployment["spec"]["replicas"] == 2
    scale_entry = next(e for e in deployment["metadata"]["managedFields"] if e.get("subresource") == "scale")
    assert (scale_entry["manager"], scale_entry["operation"]) == ("OpenAPI-Generator", "Update")
    assert scale_entry["fieldsV1"] == {"f:spec": {"f:replicas": {}}}


async def test_apply_merges_containers_by_name(api_double: ApiDouble, http: httpx.AsyncClient) -> None:
    api_double.create(manifests.deployment("web", replicas=0))
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    current = (await http.get(path)).json()
    container = current["spec"]["template"]["spec"]["containers"][0]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"template": {"spec": {"containers": [{"name": container["name"], "image": "new"}]}}},
    }
    applied = (await apply(http, path, body)).json()
    assert applied["metadata"]["labels"]["tier"] == "front"
    [merged] = applied["spec"]["template"]["spec"]["containers"]
    assert merged == container | {"image": "new"}
    assert applied["metadata"]["generation"] == 2


async def test_apply_refusals(http: httpx.AsyncClient) -> None:
    no_manager = await http.patch(CM_PATH, content=yaml.safe_dump(config_map()), headers=APPLY)
    wrong_kind = await apply(http, CM_PATH, config_map() | {"kind": "Secret"})
    wrong_name = await apply(http, CM_PATH, config_map() | {"metadata": {"name": "other"}})
    not_yaml = await http.patch(CM_PATH, params={"fieldManager": "m"}, content=b"a: [", headers=APPLY)
    not_object = await http.patch(CM_PATH, params={"fieldManager": "m"}, content=b"- 1", headers=APPLY)
    responses = (no_manager, wrong_kind, wrong_name, not_yaml, not_object)
    assert [r.status_code for r in responses] == [400] * 5
    assert (await http.get(CM_PATH)).status_code == 404


async def test_the_kinds_a_chart_installs_are_stored_and_discoverable(kube_client: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_client)
    role: Any = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    await rbac.create_namespaced_role("default", role)
    assert (await rbac.read_namespaced_role("r", "default")).rules[0].verbs == ["get"]
    pdb: Any = {"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}}
    await client.PolicyV1Api(kube_client).create_namespaced_pod_disruption_budget("default", pdb)
    apps = await client.AppsV1Api(kube_client).get_api_resources()
    assert {"statefulsets", "daemonsets"} <= {r.name for r in apps.resources}
    groups = {g.name for g in (await client.ApisApi(kube_client).get_api_versions()).groups}
    assert {"rbac.authorization.k8s.io", "policy", "networking.k8s.io"} <= groups
