"""Replica announcements with the Kubernetes backend: taken from an address in the model's EndpointSlices even
while its endpoint is not ready yet (the kubelet's probe has not passed), refused from any other address."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import announce_ready, eventually, run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.double.commands import PodCommand
from tests.kube.manifests import model_deployment, runtime_pods

pytestmark = pytest.mark.kubernetes


def announcing_pods(cache_dir: Path, redis_url: str) -> Any:
    plain = runtime_pods(cache_dir)

    def command(deployment: dict[str, Any], port: int) -> PodCommand:
        argv = [*plain(deployment, port).argv, "--announce-to", redis_url, "--announce-interval-s", "0.5"]
        return PodCommand(argv)

    return command


async def test_an_announcing_pod_gets_work_before_its_endpoint_turns_ready(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, tmp_path: Path
) -> None:
    kubelet = api_double.kubelet
    kubelet.settings = dataclasses.replace(kubelet.settings, readiness_poll_s=3600.0)  # probe fails once, then waits
    kubelet.command_for = announcing_pods(tmp_path / "cache", redis_url)
    api_double.create(model_deployment("echo", "echo"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, scale_interval_s=0.1) as gw:
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"model": "echo", "prompt": "hello", "max_tokens": 3}
            response = await http.post(gw.url + "/v1/completions", json=body)
        assert response.status_code == 200, response.text
        assert gw.metric("kaltstart_replica_announcements_total", outcome="accepted") >= 1
        deployment = api_double.find("apps/v1", "Deployment", "default", "echo")
        assert deployment is not None and not deployment.get("status", {}).get("readyReplicas")

        intruder = await announce_ready(redis_url, "http://10.99.0.1:8000", "echo")
        await eventually(lambda: gw.metric("kaltstart_replica_announcements_total", outcome="refused") == 1)
        assert intruder.url not in gw.endpoints.get("echo")
