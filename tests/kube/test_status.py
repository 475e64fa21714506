"""``python -m gateway status`` with the Kubernetes backend, against the API double: each model's desired and ready
replicas are its Deployment's, and the command only lists (no watch, Lease, Event, scale, owner record)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.store import keys
from tests.kube.double import ApiDouble, PodCommand, tiny_pod_command
from tests.kube.manifests import model_deployment

pytestmark = pytest.mark.kubernetes

#: A pod that never listens, so never gets ready.
NEVER_READY = PodCommand([sys.executable, "-c", "import time; time.sleep(600)"])


def pods(deployment: dict[str, Any], port: int) -> PodCommand:
    return NEVER_READY if deployment["metadata"]["name"] == "stuck" else tiny_pod_command(deployment, port)


def ready(api: ApiDouble, name: str) -> int:
    found = api.find("apps/v1", "Deployment", "default", name) or {}
    count: int = (found.get("status") or {}).get("readyReplicas") or 0
    return count


async def test_status_reads_desired_and_ready_from_the_deployments(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str
) -> None:
    api_double.kubelet.command_for = pods
    api_double.create(model_deployment("warm", "alpha", replicas=2))
    api_double.create(model_deployment("stuck", "beta", replicas=3))
    api_double.create(model_deployment("cold", "gamma"))
    await api_double.wait_for(lambda: ready(api_double, "warm") == 2 or None, 30, "warm ready")
    before = len(api_double.requests)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALTSTART_") and k != "REDIS_URL"}
    env |= {"KALTSTART_BACKEND": "kubernetes", "KUBECONFIG": str(kubeconfig), "KALTSTART_NAMESPACES": "default"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "status", "--json", env=env | {"REDIS_URL": redis_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    document = json.loads(out)
    assert document["backend"] == "kubernetes"
    models = {m["model"]: m for m in document["models"]}
    assert {name: m["replicas"] for name, m in models.items()} == {
        "alpha": {"desired": 2, "ready": 2},
        "beta": {"desired": 3, "ready": 0},
        "gamma": {"desired": 0, "ready": 0},
    }
    assert {name: m["state"] for name, m in models.items()} == {
        "alpha": "idle", "beta": "scaling_up", "gamma": "at_rest",
    }  # fmt: skip
    assert models["alpha"]["unit"] == "default/warm"
    made = api_double.requests[before:]
    assert made and {(r.verb, r.resource) for r in made} == {("list", "deployments")}
    redis = Redis.from_url(redis_url)
    try:
        assert not await redis.exists(keys.ROUTE_OWNERS)  # read, never written
    finally:
        await redis.aclose()
