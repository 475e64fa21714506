"""Runs a real gateway (uvicorn on a real socket, local backend, real runtime processes) inside a test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.backends.local import LocalBackend, LocalConfig, LocalModel
from gateway.endpoints import ReadyEndpoints
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings, ModelSettings


@dataclass
class RunningGateway:
    url: str
    app: Starlette
    backend: LocalBackend
    endpoints: ReadyEndpoints

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.app.state.gateway._metrics
        return metrics

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

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


def model(name: str, source: Path | str, engine: str = "torch", **settings: str | int | float) -> LocalModel:
    """A local model entry; ``settings`` use the config file's keys with ``_`` for ``-``."""
    keys = {key.replace("_", "-"): value for key, value in settings.items()}
    return LocalModel(settings=ModelSettings.parse(name, keys), source=str(source), engine=engine, device="cpu")


@contextlib.asynccontextmanager
async def run_gateway(
    models: list[LocalModel], redis_url: str, cache_dir: Path, **overrides: object
) -> AsyncIterator[RunningGateway]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    settings = replace(GatewaySettings(host=host, port=port, redis_url=redis_url), **overrides)  # type: ignore[arg-type]
    endpoints = ReadyEndpoints()
    backend = LocalBackend(LocalConfig(models=tuple(models), cache_dir=cache_dir), endpoints)
    app = create_app(settings, redis_url=redis_url, backend=backend, endpoints=endpoints, models=backend.models)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    config.load()
    server = uvicorn.Server(config)
    # What Server.serve() does, minus taking over the test process's signal handlers.
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    serving = asyncio.create_task(server.main_loop())
    try:
        yield RunningGateway(f"http://{host}:{port}", app, backend, endpoints)
    finally:
        server.should_exit = True
        await serving
        await server.shutdown(sockets=[sock])
        sock.close()
