"""A gateway serving many models does work per watch event for the models the event touches, not for all."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from gateway.backends.kubernetes import index
from gateway.backends.kubernetes.claims import routes_of
from tests.harness import eventually, run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment
from tests.kube.test_backend import wait_models

pytestmark = pytest.mark.kubernetes

MODELS = 300


def endpoint_slice(service: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abcde",
            "namespace": "default",
            # Written here as the EndpointSlice controller would: the gateway reads only the controller's slices.
            "labels": {index.SERVICE_NAME_LABEL: service, index.MANAGED_BY_LABEL: index.SLICE_CONTROLLER},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


async def test_an_event_touches_only_its_models(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    names = {f"m{i:03d}" for i in range(MODELS)}
    for name in sorted(names):
        api_double.create(model_deployment(name, name))
    async with run_kubernetes_gateway(kubeconfig, redis_url) as gw:
        await wait_models(gw, names)
        published: list[str] = []
        parsed: list[str] = []
        real_set = gw.endpoints.set

        def spy_set(model: str, urls: Iterable[str]) -> None:
            published.append(model)
            real_set(model, urls)

        def spy_routes_of(deployment: Any) -> Any:
            parsed.append(deployment["metadata"]["name"])
            return routes_of(deployment)

        monkeypatch.setattr(gw.endpoints, "set", spy_set)
        monkeypatch.setattr(index, "routes_of", spy_routes_of)

        ready = asyncio.Event()
        gw.endpoints.subscribe(lambda model: ready.set() if model == "m007" else None)
        api_double.create(endpoint_slice("m007", 40007))
        await asyncio.wait_for(ready.wait(), 10)
        assert gw.endpoints.get("m007") == ("http://127.0.0.1:40007",)
        assert published == ["m007"]

        published.clear()
        apps = client.AppsV1Api(kube_client)
        patch = {"metadata": {"annotations": {"kaltstart.dev/models": "m042,m042-b"}}}
        await apps.patch_namespaced_deployment("m042", "default", patch)
        await wait_models(gw, names | {"m042-b"})
        assert parsed == ["m042"]
        assert sorted(published) == ["m042-b"]  # the new name; m042's route is unchanged

        parsed.clear()
        await apps.patch_namespaced_deployment_scale("m100", "default", {"spec": {"replicas": 0}})  # no change
        await apps.patch_namespaced_deployment("m100", "default", {"metadata": {"labels": {"team": "x"}}})
        await eventually(lambda: _labelled(gw, "m100"))  # a label change announces nothing
        assert parsed == []  # a change that is not to the annotations parses nothing


def _labelled(gw: Any, name: str) -> bool:
    found = gw.backend._deployments["default"].get(("default", name)) or {}
    return bool((found.get("metadata") or {}).get("labels", {}).get("team"))
