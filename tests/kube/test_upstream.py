"""The Kubernetes backend with a Deployment annotated ``kaltstart.dev/protocol: openai`` (a vLLM or SGLang pod, as
the chart's ``runtime: vllm`` renders it): scaled from zero on the first request, ready when its EndpointSlice says
so (the pod's readiness probe on the upstream's health route), the request forwarded as sent with the served model
name, at most ``max-concurrency`` in flight, and back to zero. The pods run the tests' own OpenAI-compatible server
(``tests.fake_upstream``), which says what it received."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import run_kubernetes_gateway
from tests.kube.double import ApiDouble, PodCommand
from tests.kube.manifests import model_deployment

pytestmark = pytest.mark.kubernetes


def _upstream_pod(deployment: dict[str, Any], port: int) -> PodCommand:
    return PodCommand([sys.executable, "-m", "tests.fake_upstream", "--port", str(port), "--token-delay", "0.05"])


def _vllm_like(name: str, model: str, **settings: str) -> dict[str, Any]:
    deployment = model_deployment(name, model, 0, protocol="openai", **settings)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["readinessProbe"] = {"httpGet": {"path": "/health", "port": "http"}}
    return deployment


async def test_an_openai_deployment_is_scaled_from_zero_and_gets_the_body_as_sent(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str
) -> None:
    api_double.kubelet.command_for = _upstream_pod
    settings = {"upstream_model": "org/served", "max_concurrency": "2", "idle_timeout": "1s"}
    api_double.create(_vllm_like("vllm", "chat", **settings))
    async with (
        run_kubernetes_gateway(kubeconfig, redis_url, scale_interval_s=0.1) as gw,
        httpx.AsyncClient(timeout=60) as http,
    ):
        body = {"model": "chat", "prompt": "hi", "max_tokens": 3, "guided_choice": ["a", "b"]}
        answers = await asyncio.gather(*(http.post(f"{gw.url}/v1/completions", json=body) for _ in range(5)))
        assert [a.status_code for a in answers] == [200] * 5, answers[0].text
        assert {a.json()["model"] for a in answers} == {"chat"} and answers[0].json()["choices"][0][
            "text"
        ] == "w0 w1 w2"

        (url,) = gw.endpoints.get("chat")
        stats = (await http.get(f"{url}/stats")).json()
        assert stats["last_body"] == body | {"model": "org/served"}
        assert stats["finished"] == 5 and stats["max_in_flight"] == 2
        assert gw.catalog.get("chat").forwards
        await api_double.wait_for(lambda: _replicas(api_double, "vllm") == 0 or None, 20, "vllm back at zero")


def _replicas(api: ApiDouble, name: str) -> int:
    found = api.find("apps/v1", "Deployment", "default", name)
    assert found is not None
    count: int = found["spec"]["replicas"]
    return count
