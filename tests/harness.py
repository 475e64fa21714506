"""Runs a real gateway (uvicorn on a real socket, a real backend, real runtime processes) inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.types import ASGIApp

import wire
from gateway.api.serving import listen, uvicorn_config
from gateway.app import create_app
from gateway.backends import BackendParts
from gateway.backends.kubernetes.backend import KubernetesBackend, build_kubernetes
from gateway.backends.kubernetes.owners import RedisOwners
from gateway.backends.local.backend import LocalBackend, LocalReplica, build_local
from gateway.backends.local.config import LocalConfig, LocalModel, LocalPool
from gateway.catalog import ModelCatalog
from gateway.metrics import Metrics
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.autoscaler import Scaler
from gateway.settings import GatewaySettings, KubernetesSettings, ModelSettings, ServerSettings
from gateway.store.connection import connect
from gateway.tracing import OFF, Tracing
from loadtest.children import local_model

B = TypeVar("B", LocalBackend, KubernetesBackend)


@dataclass
class RunningGateway(Generic[B]):
    url: str
    app: Starlette
    backend: B
    endpoints: ReadyEndpoints
    catalog: ModelCatalog

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.app.state.gateway._metrics
        return metrics

    @property
    def scaler(self) -> Scaler:
        scaler: Scaler = self.app.state.scaler
        return scaler

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.metrics.registry, name, **labels)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``condition()`` holds, re-checking whenever a model's ready replicas change."""
        changed = asyncio.Event()
        unsubscribe = self.endpoints.subscribe(lambda _model: changed.set())
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    changed.clear()
                    await changed.wait()
        finally:
            unsubscribe()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with ``labels``: 0.0 if its metric has no such sample yet (a labelled
    counter nobody incremented); raises if no metric in ``registry`` has a sample of that name, or if its samples
    carry other label names, so that a renamed metric cannot make an ``== 0`` check pass."""
    value = registry.get_sample_value(name, labels)
    if value is not None:
        return value
    families = [f for f in registry.collect() if name in _sample_names(f)]
    if not families:
        raise KeyError(f"no metric has a sample named {name!r}")
    label_sets = {frozenset(s.labels) for f in families for s in f.samples if s.name == name}
    if label_sets and frozenset(labels) not in label_sets:
        raise KeyError(f"{name!r} has the labels {sorted(map(sorted, label_sets))}, not {sorted(labels)}")
    return 0.0


#: The sample names a metric family of each type may have, beside those it has now.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}


def _sample_names(family: Metric) -> set[str]:
    return {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))} | {s.name for s in family.samples}


LocalGateway = RunningGateway[LocalBackend]
KubernetesGateway = RunningGateway[KubernetesBackend]


def replica_processes(gw: LocalGateway, model: str) -> tuple[LocalReplica, ...]:
    """The local backend's replicas of ``model`` as they are now (to read a replica's URL or pid, or kill it)."""
    return tuple(gw.backend._group(model).replicas)


def model(
    name: str, source: Path | str, engine: str = "torch", args: tuple[str, ...] = (), **settings: str | int | float
) -> LocalModel:
    """A local model entry on CPU (the benchmarks' builder); ``settings`` use the config file's keys with ``_`` for
    ``-``; ``args`` are extra ``python -m runtime`` flags."""
    return local_model(name, str(source), engine=engine, device="cpu", dtype="auto", args=args, **settings)


#: The tests' own OpenAI-compatible server (``tests.fake_upstream``), whose ``/stats`` says what it saw.
FAKE_UPSTREAM = (sys.executable, "-m", "tests.fake_upstream", "--host", "{host}", "--port", "{port}")


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, lifespan: bool = True) -> AsyncIterator[str]:
    """Any ASGI ``app`` on a real loopback socket for the duration of the block; yields its base URL."""
    config = uvicorn.Config(app, log_level="warning", lifespan="on" if lifespan else "off")
    async with _listening() as sock, _serve(config, sock):
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def _serve(config: uvicorn.Config, sock: socket.socket) -> AsyncIterator[None]:
    config.load()
    server = uvicorn.Server(config)
    # What Server.serve() does, minus taking over the test process's signal handlers.
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    serving = asyncio.create_task(server.main_loop())
    try:
        yield
    finally:
        server.should_exit = True
        await serving
        await server.shutdown(sockets=[sock])


def _settings(redis_url: str, sock: socket.socket, overrides: dict[str, Any]) -> GatewaySettings:
    """Settings for a gateway on ``sock``; ``overrides`` name fields of any section (``max_queue_per_model=2``)."""
    host, port = sock.getsockname()
    return GatewaySettings(server=ServerSettings(host=host, port=port, redis_url=redis_url)).replace(**overrides)


@contextlib.asynccontextmanager
async def _listening() -> AsyncIterator[socket.socket]:
    sock = listen("127.0.0.1", 0)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def _run(
    settings: GatewaySettings, parts: BackendParts, sock: socket.socket, tracing: Tracing = OFF
) -> AsyncIterator[RunningGateway[Any]]:
    app = create_app(settings, redis_url=cast(str, settings.server.redis_url), parts=parts, tracing=tracing)
    # The production server's config (its HTTP guards, its keep-alive), quieter; "on": a failed start-up fails the
    # test instead of being logged as "lifespan unsupported".
    config = uvicorn_config(app, settings.server, log_level="warning")
    config.lifespan = "on"
    async with _serve(config, sock):
        url = f"http://{settings.server.host}:{settings.server.port}"
        yield RunningGateway(url, app, parts.backend, parts.endpoints, parts.catalog)


@contextlib.asynccontextmanager
async def run_gateway(
    models: list[LocalModel],
    redis_url: str,
    cache_dir: Path,
    *,
    standby: int = 0,
    announce: bool = True,
    pools: tuple[LocalPool, ...] = (),
    tracing: Tracing = OFF,
    adapters: tuple[ModelSettings, ...] = (),
    **overrides: Any,
) -> AsyncIterator[LocalGateway]:
    """A gateway with the local backend serving ``models`` (some of them in ``pools``, some with LoRA ``adapters``:
    ``ModelSettings`` whose ``adapter`` is set); its runtimes announce
    themselves (as under ``python -m gateway``) unless ``announce`` is off, and require a random token on their
    API, as under ``python -m gateway`` (``runtime_token=None`` turns it off). No standby runtime by
    default: most tests need none, and each costs a process importing torch."""
    async with _listening() as sock:
        settings = _settings(redis_url, sock, {"runtime_token": secrets.token_urlsafe(32), **overrides})
        config = LocalConfig(models=tuple(models), cache_dir=cache_dir, standby=standby, pools=pools, adapters=adapters)
        token = settings.server.runtime_token
        parts = build_local(config, announce_to=redis_url if announce else None, token=token)
        async with _run(settings, parts, sock, tracing) as gateway:
            yield gateway


@contextlib.asynccontextmanager
async def run_kubernetes_gateway(
    kubeconfig: Path,
    redis_url: str,
    namespace: str = "default",
    lease_s: int = 2,
    allow: Mapping[str, tuple[str, ...]] | None = None,
    owners_url: str | None = None,
    **overrides: Any,
) -> AsyncIterator[KubernetesGateway]:
    """A gateway with the Kubernetes backend, talking to the API server named in ``kubeconfig``, serving
    ``namespace`` (or several, comma-separated), with ``allow`` as its route allow-list, recording the owners of
    model names in ``owners_url`` (by default its own Redis, as ``python -m gateway`` does)."""
    async with _listening() as sock:
        settings = _settings(redis_url, sock, {"backend": "kubernetes", **overrides})
        kube = KubernetesSettings(
            namespaces=tuple(namespace.split(",")),
            lease_duration_s=lease_s,
            kubeconfig=str(kubeconfig),
            route_allow_list=allow or {},
        )
        owners = RedisOwners(connect(owners_url or redis_url, settings.queue))
        parts = build_kubernetes(kube, identity=settings.server.gateway_id, owners=owners)
        async with _run(settings, parts, sock) as gateway:
            yield gateway


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` holds, for state that announces no change (a metric counted after an HTTP
    response arrives). Polls; prefer waiting on an event where there is one."""
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - nothing to wait on, see above
            await asyncio.sleep(0.02)


async def announce_ready(redis_url: str, url: str, model: str, *raw: str) -> wire.Announcement:
    """Publish a ready ``Announcement`` of ``model`` at ``url`` on the replicas channel (then ``raw`` messages), as
    a replica would, or something posing as one."""
    announcement = wire.Announcement(
        url=url,
        models=(model,),
        state="ready",
        elapsed_s=1.0,
        interval_s=1.0,
        ready=wire.ReadyBody(model=model, max_batch_size=1, context_length=64),
    )
    redis = Redis.from_url(redis_url)
    try:
        for message in (announcement.model_dump_json(), *raw):
            await redis.publish(wire.REPLICAS_CHANNEL, message)
    finally:
        await redis.aclose()
    return announcement
