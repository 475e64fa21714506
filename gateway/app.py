"""Assembles a gateway from its parts and wraps it in a Starlette app whose lifespan starts and stops them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Protocol

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from gateway import keys
from gateway.catalog import ModelCatalog
from gateway.dispatch import Dispatcher, Dispatchers
from gateway.endpoints import ReadyEndpoints
from gateway.errors import RequestError
from gateway.janitor import Janitor
from gateway.metrics import Metrics
from gateway.queue import RequestQueue
from gateway.replies import ReplyRouter
from gateway.routes import error_response, routes
from gateway.scaling import ReplicaControl, Scaler
from gateway.service import Gateway
from gateway.settings import GatewaySettings


class Backend(ReplicaControl, Protocol):
    """What the app needs of a backend beyond scaling: its start, its stop, and whether this gateway replica
    may scale down (only one replica at a time should)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def is_leader(self) -> bool: ...


def _runtime_client(settings: GatewaySettings) -> httpx.AsyncClient:
    # Read timeout: the longest gap between two events of a batch answer (a batch's first token can take a
    # while on a big prompt); a request's own deadline is enforced by its ticket.
    timeout = httpx.Timeout(connect=5.0, read=settings.request_timeout_s, write=30.0, pool=None)
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=256))


def create_app(
    settings: GatewaySettings,
    *,
    redis_url: str,
    backend: Backend,
    endpoints: ReadyEndpoints,
    catalog: ModelCatalog,
) -> Starlette:
    """``catalog`` is the backend's: the local backend fills it once, the Kubernetes backend keeps it current."""
    redis = Redis.from_url(redis_url)
    metrics = Metrics()
    queue = RequestQueue(redis, settings.max_queue_per_model)
    replies = ReplyRouter(redis, keys.replies(settings.gateway_id))
    scaler = Scaler(
        catalog,
        queue,
        backend,
        endpoints,
        metrics,
        interval_s=settings.scale_interval_s,
        clock=time.monotonic,
        may_scale_down=lambda: backend.is_leader,
    )
    client = _runtime_client(settings)
    dispatchers = Dispatchers(
        catalog,
        lambda model: Dispatcher(model, queue, endpoints, client, settings.gateway_id, metrics, settings.max_attempts),
    )
    gateway = Gateway(settings, catalog, queue, replies, scaler, metrics)
    janitor = Janitor(queue, catalog, settings.gateway_id, interval_s=settings.heartbeat_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await replies.start()
        await janitor.start()
        await backend.start()
        dispatchers.sync()
        await scaler.start()
        try:
            yield
        finally:
            await scaler.stop()
            await dispatchers.stop()
            await janitor.stop()
            await backend.stop()
            await replies.stop()
            await client.aclose()
            await redis.aclose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            RequestError: error_response,
            HTTPException: error_response,
            Exception: error_response,
        },
    )
    app.state.gateway = gateway
    app.state.scaler = scaler
    return app
