"""End to end: install the chart with the real Helm library into the Kubernetes API double, then run the
gateway the way the chart's pod runs it (Kubernetes backend, the release namespace, the API key file from the
Secret the chart created, a metrics port apart) against that API: the model Deployment the chart created is
discovered, a request without the key is refused, and one with it scales the model from zero and back."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest

from tests.chart.rendering import CHART_DIR, RELEASE
from tests.harness import run_kubernetes_gateway
from tests.kube.double import ApiDouble, PodCommand, tiny_pod_command
from tests.kube.double.commands import CommandFactory
from tests.kube.manifests import runtime_pods

pytestmark = [pytest.mark.chart, pytest.mark.kubernetes]

NAMESPACE = "default"
MODEL_DEPLOYMENT = f"{RELEASE}-tiny"
VALUES: dict[str, Any] = {"models": [{"name": "tiny", "source": "org/tiny", "idleTimeout": "2s"}]}


def install(kubeconfig: Path, values: dict[str, Any]) -> dict[str, Any]:
    """``helm install`` through the Helm library (blocking: run it off the event loop that serves the double).
    No wait: the bundled Redis StatefulSet has no pods here (the double runs only Deployments)."""
    with (
        helm_python.Config(kubeconfig_path=kubeconfig, storage_driver="memory") as config,
        helm_python.Chart.load(CHART_DIR) as chart,
    ):
        release: dict[str, Any] = dict(config.install(chart, RELEASE, values, namespace=NAMESPACE, timeout=30))
        return release


def pods_by_role(cache_dir: Path) -> CommandFactory:
    """Model Deployments run the echo runtime; anything else the chart runs (the gateway Deployment, which
    the test replaces by an in-process gateway) a harmless stand-in that serves /readyz."""
    runtime = runtime_pods(cache_dir)

    def command(deployment: dict[str, Any], port: int) -> PodCommand:
        labels = deployment["metadata"].get("labels") or {}
        return (
            runtime(deployment, port)
            if labels.get("kaltstart.dev/enabled") == "true"
            else tiny_pod_command(deployment, port)
        )

    return command


def found(api: ApiDouble, api_version: str, kind: str, name: str) -> dict[str, Any]:
    obj = api.find(api_version, kind, NAMESPACE, name)
    assert obj is not None, f"{kind} {name} was not installed"
    return obj


def replicas(api: ApiDouble) -> int:
    count: int = found(api, "apps/v1", "Deployment", MODEL_DEPLOYMENT)["spec"]["replicas"]
    return count


async def test_installed_chart_scales_its_model_from_zero_and_back(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, tmp_path: Path
) -> None:
    api_double.kubelet.command_for = pods_by_role(tmp_path / "cache")
    release = await asyncio.to_thread(install, kubeconfig, VALUES)
    assert release["status"] == "deployed"

    model = found(api_double, "apps/v1", "Deployment", MODEL_DEPLOYMENT)
    assert model["spec"]["replicas"] == 0
    assert model["metadata"]["labels"]["kaltstart.dev/enabled"] == "true"
    annotations = model["metadata"]["annotations"]
    assert annotations["kaltstart.dev/models"] == "tiny"
    assert annotations["kaltstart.dev/idle-timeout"] == "2s"
    assert annotations["kaltstart.dev/service"] == MODEL_DEPLOYMENT
    role = found(api_double, "rbac.authorization.k8s.io/v1", "Role", f"{RELEASE}-gateway")
    scale_rule = {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update"]}
    assert scale_rule in role["rules"]
    found(api_double, "rbac.authorization.k8s.io/v1", "RoleBinding", f"{RELEASE}-gateway")
    found(api_double, "v1", "Service", MODEL_DEPLOYMENT)
    applies = [r for r in api_double.requests if r.verb == "patch"]
    assert applies and {r.content_type for r in applies} == {"application/apply-patch+yaml"}

    # The gateway runs here, in-process, configured as the chart configures its pod.
    gateway = found(api_double, "apps/v1", "Deployment", f"{RELEASE}-gateway")
    assert gateway["spec"]["replicas"] == 2
    pod = gateway["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KALTSTART_BACKEND"] == "kubernetes"
    assert env["KALTSTART_LEASE_NAME"] == "kaltstart-gateway"  # the lease name run_kubernetes_gateway uses
    namespace = env["KALTSTART_NAMESPACES"]
    assert namespace == NAMESPACE
    # The key file: what the kubelet would put in the Secret volume, from the Secret the chart installed.
    (keys,) = [v["secret"] for v in pod["volumes"] if v["name"] == "api-keys"]
    (item,) = keys["items"]
    assert env["KALTSTART_API_KEYS_FILE"].endswith("/" + item["path"])
    secret = found(api_double, "v1", "Secret", keys["secretName"])
    key_file = tmp_path / item["path"]
    key_file.write_bytes(base64.b64decode(secret["data"][item["key"]]))
    api_key = key_file.read_text().strip()
    metrics_port = int(env["KALTSTART_METRICS_PORT"])  # not listened on here: only the API port is

    async with (
        run_kubernetes_gateway(
            kubeconfig,
            redis_url,
            namespace=namespace,
            scale_interval_s=0.1,
            api_keys_file=key_file,
            metrics_port=metrics_port,
        ) as gw,
        httpx.AsyncClient(timeout=30) as anonymous,
        httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {api_key}"}) as http,
    ):
        body = {"model": "tiny", "prompt": "hello chart", "max_tokens": 4, "temperature": 0}
        assert (await anonymous.post(gw.url + "/v1/completions", json=body)).status_code == 401
        assert (await anonymous.get(gw.url + "/v1/models")).status_code == 401
        assert (await http.get(gw.url + "/metrics")).status_code == 404  # the metrics port's alone
        assert replicas(api_double) == 0  # refused requests scale nothing

        models = (await http.get(gw.url + "/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["tiny"]

        response = await http.post(gw.url + "/v1/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "tiny"

        writes = api_double.requests_for("update", "deployments/scale", MODEL_DEPLOYMENT)
        assert {w.body["spec"]["replicas"] for w in writes} == {1}  # (twice if a 409 made it read again)
        await api_double.wait_for(lambda: replicas(api_double) == 0, 15, "the idle model scaled back to 0")
        writes = api_double.requests_for("update", "deployments/scale", MODEL_DEPLOYMENT)
        assert writes[-1].body["spec"]["replicas"] == 0
