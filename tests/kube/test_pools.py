"""A pool Deployment (``kaltstart.dev/pool: "true"``) on the API double: its pods run ``python -m runtime --pool``,
each of its names is a model of its own that answers through the gateway, the gateway learns where each model is
on the pod from the batch answers, and the Deployment (one scaling unit) goes back to zero once all are idle."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from runtime.weights.demo_model import build
from tests.harness import run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment, runtime_pods

pytestmark = pytest.mark.kubernetes

#: The demo model's float32 weights are 3.4 MB: the device holds one of them.
BUDGETS = ("--pool-device-bytes", "4000000", "--pool-host-bytes", "8000000")


async def test_a_pool_deployment_serves_each_of_its_models_and_goes_back_to_zero(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, demo_model_dir: Path, tmp_path: Path
) -> None:
    sources = {"a": demo_model_dir, "b": build(tmp_path / "b", seed=7), "c": build(tmp_path / "c", seed=99)}
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache", pool=sources, pool_args=BUDGETS)
    api_double.create(model_deployment("small", "a,b,c", pool="true", idle_timeout="1s"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, scale_interval_s=0.1) as gw:
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert all(gw.catalog.pooled(name) for name in ("a", "b", "c"))  # each its own unload threshold
        texts = {}
        for name in ("a", "b", "c"):
            answer = await sdk.completions.create(model=name, prompt="hello pool", max_tokens=8, temperature=0)
            texts[name] = answer.choices[0].text
            (url,) = gw.endpoints.get(name)  # the one pod, ready for every model of the pool
            assert gw.endpoints.residency.preference(url, name) == (2, 0), name  # active there, it said
        assert len(set(texts.values())) == 3  # three models, not three names of one
        assert replicas(api_double) == 1  # one pod for all three
        await api_double.wait_for(lambda: replicas(api_double) == 0 or None, 30, "the pool back at zero")


def replicas(api: ApiDouble) -> int:
    deployment = api.find("apps/v1", "Deployment", "default", "small")
    assert deployment is not None
    count: int = deployment["spec"]["replicas"]
    return count
