"""A Kubernetes gateway on this machine for ``bench scale``: the project's API double (``python -m
tests.kube.double``) as its own process, annotated model Deployments created through the real client, and
``python -m gateway`` with the Kubernetes backend against it. Pods are real ``python -m runtime --engine echo``
processes the double's kubelet starts; idle models have ``replicas: 0`` and run nothing.

Also how a process is watched from outside: CPU time and RSS from ``/proc``, commands and clients from Redis
``INFO``. The double lives in the repository's ``tests/`` (not installed), so this needs a checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from redis.asyncio import Redis

from gateway.processes import free_port
from loadtest.children import Child, GatewayProcess, StartError, child_env, gateway_child

__all__ = [
    "Cluster",
    "ProcessSample",
    "RedisSample",
    "model_deployment",
    "process_sample",
    "redis_sample",
    "running_cluster",
    "running_kube_gateway",
]

NAMESPACE = "default"
_LISTENING = re.compile(r"listening on (http://\S+)")
#: Deployments created at once (the double serves them one by one; more only queue up).
_CREATE_CONCURRENCY = 32
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def model_deployment(name: str, models: Sequence[str], replicas: int, cache_dir: Path) -> dict[str, Any]:
    """A Deployment serving ``models`` with the echo engine. ``replicas`` is also its ``min-replicas``, so a warm
    one stays warm and an idle one (0) stays idle for the whole run."""
    names = ",".join(models)
    runtime = [sys.executable, "-m", "runtime", "--model-name", names, "--engine", "echo", "--device", "cpu"]
    runtime += ["--host", "127.0.0.1", "--cache-dir", str(cache_dir)]
    command = f'exec {shlex.join(runtime)} --port "$PORT"'  # the kubelet gives each pod its port in $PORT
    annotations = {
        "kaltstart.dev/models": names,
        "kaltstart.dev/min-replicas": str(replicas),
        "kaltstart.dev/max-replicas": str(max(1, replicas)),
        "kaltstart.dev/idle-timeout": "3600s",
        "kaltstart.dev/max-batch-delay": "0ms",
    }
    labels = {"app": name}
    container = {
        "name": "runtime",
        "image": "kaltstart-runtime",
        "command": ["/bin/sh", "-c", command],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kaltstart.dev/enabled": "true", **labels},
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


@dataclass
class Cluster:
    """The API double's process and a client of it."""

    url: str
    kubeconfig: Path
    child: Child
    api: client.ApiClient

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    async def create(self, manifests: Sequence[dict[str, Any]]) -> None:
        apps, gate = self.apps, asyncio.Semaphore(_CREATE_CONCURRENCY)

        async def one(manifest: dict[str, Any]) -> None:
            async with gate:
                await apps.create_namespaced_deployment(NAMESPACE, manifest)  # type: ignore[arg-type]

        await asyncio.gather(*(one(m) for m in manifests))

    async def annotate(self, deployment: str, annotations: dict[str, str]) -> None:
        await self.apps.patch_namespaced_deployment(deployment, NAMESPACE, {"metadata": {"annotations": annotations}})


@contextlib.asynccontextmanager
async def running_cluster(work: Path, timeout_s: float = 30.0) -> AsyncIterator[Cluster]:
    """``python -m tests.kube.double`` until the block ends (its pods stop with it)."""
    kubeconfig = work / "kubeconfig"
    argv = [sys.executable, "-m", "tests.kube.double", "--port", "0", "--kubeconfig", str(kubeconfig)]
    child = Child("api-double", argv, child_env({}), work / "api-double.log")
    try:
        match = await child.log.wait_for(_LISTENING, 0, timeout_s)
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            yield Cluster(match.group(1), kubeconfig, child, api)
    finally:
        child.stop()


@contextlib.asynccontextmanager
async def running_kube_gateway(
    cluster: Cluster, redis_url: str, log_path: Path, timeout_s: float = 120.0
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway`` with the Kubernetes backend, once its ``/readyz`` answers (the first list of
    Deployments and EndpointSlices is in)."""
    port = free_port()
    env = {
        "KALTSTART_BACKEND": "kubernetes",
        "KALTSTART_NAMESPACES": NAMESPACE,
        "KUBECONFIG": str(cluster.kubeconfig),
        "REDIS_URL": redis_url,
        "KALTSTART_HOST": "127.0.0.1",
        "KALTSTART_PORT": str(port),
        "KALTSTART_LOG_LEVEL": "INFO",
    }
    async with gateway_child(env, port, log_path, timeout_s) as gateway:
        yield gateway


@dataclass(frozen=True)
class ProcessSample:
    #: User + system CPU seconds so far.
    cpu_s: float
    rss_bytes: int


def process_sample(pid: int) -> ProcessSample:
    """From ``/proc/PID/stat`` (utime, stime) and ``/proc/PID/statm`` (resident pages)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError as exc:
        raise StartError(f"process {pid} is gone: {exc}") from exc
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcessSample((utime + stime) / _CLOCK_TICKS, int(statm.split()[1]) * _PAGE_BYTES)


@dataclass(frozen=True)
class RedisSample:
    #: ``total_commands_processed``, this sample's own INFO included.
    commands: int
    #: ``connected_clients``, the sampling connection included.
    clients: int


async def redis_sample(redis: Redis) -> RedisSample:
    info = await redis.info()
    return RedisSample(int(info["total_commands_processed"]), int(info["connected_clients"]))
