"""Upgrades never kill or strand a model: a `helm upgrade` with the real Helm library (server-side apply, as Helm 4
does by default) into the Kubernetes API double, which keeps field ownership as a real API server does, while
one model serves at 1 replica the gateway set through `deployments/scale` and another idles at 0.

After an upgrade to a new chart version with other values: the running model is still at 1 with the same pod,
and its pod template is unchanged (a real Deployment controller would roll nothing); the idle one is still at 0
(not reset to the default of 1); a model added by the upgrade is created at 0; nothing conflicts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from kubernetes_asyncio import client

from tests.chart.rendering import CHART_DIR, NEXT_CHART_LABEL, RELEASE
from tests.kube.double import ApiDouble

pytestmark = [pytest.mark.chart, pytest.mark.kubernetes]

NAMESPACE = "default"
TWO_MODELS: dict[str, Any] = {
    "models": [{"name": "serving", "source": "org/serving"}, {"name": "idle", "source": "org/idle"}],
    "gateway": {"replicas": 1},
}


@pytest.fixture
def helm(kubeconfig: Path) -> Iterator[helm_python.Config]:
    """One Helm configuration for the install and the upgrade (the memory storage driver keeps the release)."""
    with helm_python.Config(kubeconfig_path=kubeconfig, storage_driver="memory") as config:
        yield config


def _deployment(api: ApiDouble, name: str) -> dict[str, Any]:
    found = api.find("apps/v1", "Deployment", NAMESPACE, f"{RELEASE}-{name}")
    assert found is not None, name
    return found


def _pods(api: ApiDouble, name: str) -> list[tuple[str, str]]:
    selector = f"kaltstart.dev/deployment={RELEASE}-{name}"
    pods = api.objects("v1", "Pod", NAMESPACE, selector)
    return sorted(
        (p["metadata"]["name"], p["metadata"]["uid"]) for p in pods if not p["metadata"].get("deletionTimestamp")
    )


def _applied(release: dict[str, Any], name: str) -> dict[str, Any]:
    """The Deployment ``name`` as the release's manifest applied it."""
    for doc in yaml.safe_load_all(release["manifest"]):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == f"{RELEASE}-{name}":
            found: dict[str, Any] = doc
            return found
    raise AssertionError(f"{name} is not in the release")


async def test_an_upgrade_leaves_the_gateway_s_replica_counts_and_running_pods_alone(
    api_double: ApiDouble, helm: helm_python.Config, kube_client: client.ApiClient, next_chart: Path
) -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        await asyncio.to_thread(helm.install, chart, RELEASE, TWO_MODELS, namespace=NAMESPACE, timeout=30)
    assert _deployment(api_double, "serving")["spec"]["replicas"] == 0

    # The gateway's scale-up: read the Scale, write it back (as gateway/backends/kubernetes does).
    apps = client.AppsV1Api(kube_client)
    scale = await apps.read_namespaced_deployment_scale(f"{RELEASE}-serving", NAMESPACE)
    scale.spec.replicas = 1
    await apps.replace_namespaced_deployment_scale(f"{RELEASE}-serving", NAMESPACE, scale)
    running = await api_double.wait_for(lambda: _pods(api_double, "serving"), 10, "the serving model's pod")
    before = {name: _deployment(api_double, name) for name in ("serving", "idle")}

    values = TWO_MODELS | {
        "models": [*TWO_MODELS["models"], {"name": "added", "source": "org/added"}],
        "gateway": {"replicas": 1, "logLevel": "DEBUG"},
    }
    with helm_python.Chart.load(next_chart) as chart:
        release = await asyncio.to_thread(helm.upgrade, chart, RELEASE, values, namespace=NAMESPACE, timeout=30)
    assert release["status"] == "deployed"  # no conflict with the gateway's field

    serving, idle = _deployment(api_double, "serving"), _deployment(api_double, "idle")
    assert serving["spec"]["replicas"] == 1
    assert "replicas" not in _applied(release, "serving")["spec"]  # the chart left the count to the gateway
    assert serving["spec"]["template"] == before["serving"]["spec"]["template"]  # so nothing would roll
    assert serving["metadata"]["labels"]["helm.sh/chart"] == NEXT_CHART_LABEL  # while the object is updated
    assert _pods(api_double, "serving") == running

    assert idle["spec"]["replicas"] == 0  # kept at 0, not dropped to the default of 1
    assert idle["spec"]["template"] == before["idle"]["spec"]["template"]
    assert _pods(api_double, "idle") == []
    assert _deployment(api_double, "added")["spec"]["replicas"] == 0
    assert _applied(release, "added")["spec"]["replicas"] == 0


async def test_an_upgrade_keeps_the_generated_secrets_and_rolls_no_pod_for_them(
    api_double: ApiDouble, helm: helm_python.Config
) -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        await asyncio.to_thread(helm.install, chart, RELEASE, TWO_MODELS, namespace=NAMESPACE, timeout=30)
        secret = api_double.find("v1", "Secret", NAMESPACE, f"{RELEASE}-redis")
        keys = api_double.find("v1", "Secret", NAMESPACE, f"{RELEASE}-api-keys")
        gateway = _deployment(api_double, "gateway")["spec"]["template"]
        redis = api_double.find("apps/v1", "StatefulSet", NAMESPACE, f"{RELEASE}-redis")
        assert secret is not None and redis is not None
        await asyncio.to_thread(helm.upgrade, chart, RELEASE, TWO_MODELS, namespace=NAMESPACE, timeout=30)
    after = api_double.find("v1", "Secret", NAMESPACE, f"{RELEASE}-redis")
    assert after is not None and after["data"] == secret["data"]
    keys_after = api_double.find("v1", "Secret", NAMESPACE, f"{RELEASE}-api-keys")
    assert keys is not None and keys_after is not None and keys_after["data"] == keys["data"]
    assert _deployment(api_double, "gateway")["spec"]["template"] == gateway
    redis_after = api_double.find("apps/v1", "StatefulSet", NAMESPACE, f"{RELEASE}-redis")
    assert redis_after is not None and redis_after["spec"]["template"] == redis["spec"]["template"]
    checksum = gateway["metadata"]["annotations"]["checksum/redis-secret"]
    assert redis["spec"]["template"]["metadata"]["annotations"]["checksum/redis-secret"] == checksum
