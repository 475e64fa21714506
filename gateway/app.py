"""Assembles a gateway from its parts and wraps it in a Starlette app whose lifespan starts and stops them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

import wire
from gateway.api.admission import Admission
from gateway.api.auth import ApiKeyAuth, ApiKeys
from gateway.api.guards import PortSplit
from gateway.api.requestids import RequestIds
from gateway.api.routes import error_response, routes
from gateway.backends import BackendParts
from gateway.catalog import ModelCatalog
from gateway.dispatch.loop import Dispatcher
from gateway.dispatch.supervisor import Dispatchers
from gateway.errors import RequestError
from gateway.metrics import Metrics
from gateway.queue.budget import Account, MemoryGuard
from gateway.queue.fence import Fence, FencedDoor
from gateway.queue.recovery import Abandoned, Heartbeats, Janitor, Takeover
from gateway.queue.signals import WorkSignals
from gateway.queue.stream import BODY_GRACE_S, ReplicaWait, RequestQueue
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.replicas.announcements import Announcements
from gateway.replicas.client import AiohttpRuntimeClient
from gateway.replicas.coldstarts import ColdStarts, RedisDurations
from gateway.replicas.context import ContextLengths
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.replicas.poolreports import PoolReports
from gateway.replicas.readychecks import ReadyChecks
from gateway.scaling.autoscaler import Scaler
from gateway.scaling.gaps import KeepAlives, RedisGapStore
from gateway.scaling.pools import PoolKeeper
from gateway.settings import GatewaySettings, ServerSettings
from gateway.store import keys
from gateway.store.connection import connect
from gateway.tracing import OFF, Tracing
from wire.redis_url import RedisClient


def _runtime_client(settings: ServerSettings) -> AiohttpRuntimeClient:
    # Read timeout: the longest gap between two events of a batch answer (a batch's first token can take a
    # while on a big prompt); a request's own deadline is enforced by its ticket.
    return AiohttpRuntimeClient(
        connect_timeout_s=5.0,
        read_timeout_s=settings.request_timeout_s,
        max_connections=256,
        token=settings.runtime_token,
    )


def _queue(settings: GatewaySettings, redis: RedisClient, work: WorkSignals) -> RequestQueue:
    return RequestQueue(
        redis=redis,
        max_queue_per_model=settings.queue.max_queue_per_model,
        work=work,
        max_bytes_per_model=settings.queue.max_queued_bytes_per_model,
        hold_s=settings.server.request_timeout_s + BODY_GRACE_S,
        replica_wait=ReplicaWait(settings.queue.redis_wait_replicas, int(settings.queue.redis_wait_timeout_s * 1000)),
    )


def _key_quota(settings: GatewaySettings) -> Account:
    """Every API key's limits where its key-file line sets none."""
    queue = settings.queue
    return Account("", "", queue.max_requests_per_key, queue.max_entries_per_key, queue.max_queued_bytes_per_key)


def _middleware(server: ServerSettings, tracing: Tracing) -> list[Middleware]:
    api_keys = ApiKeys.configured(server.api_keys, server.api_keys_file)
    return [
        Middleware(RequestIds, access=server.access_log, tracing=tracing),  # outermost: its id is on every answer
        Middleware(PortSplit, metrics_port=server.metrics_port),
        *([Middleware(ApiKeyAuth, keys=api_keys)] if api_keys is not None else []),
    ]


def _replica_news(
    endpoints: ReadyEndpoints, cold_starts: ColdStarts, metrics: Metrics, client: AiohttpRuntimeClient
) -> tuple[Announcements, PoolReports]:
    """What replicas say about themselves: announcements, and pool reports (read when a pool's models moved)."""
    announcements = Announcements(
        endpoints=endpoints, cold_starts=cold_starts, metrics=metrics, checks=ReadyChecks(client)
    )
    return announcements, PoolReports(client, endpoints.residency)


def _metrics(settings: GatewaySettings, parts: BackendParts) -> Metrics:
    endpoints = parts.endpoints
    metrics = Metrics(parts.collectors, pools=endpoints.pool_replicas, adapters=endpoints.adapters.counts)
    metrics.queue_limit.set(settings.queue.max_queue_per_model)
    return metrics


def _cold_start_budget(catalog: ModelCatalog) -> Callable[[str], float | None]:
    """A model's cold-start-timeout, None for a model no longer served."""
    return lambda model: catalog.get(model).cold_start_timeout_s if catalog.has(model) else None


def create_app(settings: GatewaySettings, *, redis_url: str, parts: BackendParts, tracing: Tracing = OFF) -> Starlette:
    """The gateway serving ``parts`` (one backend's builder made them), with its queue in ``redis_url``; its spans
    go to ``tracing`` (``Tracing.from_env``; off by default)."""
    server, backend, catalog, endpoints = settings.server, parts.backend, parts.catalog, parts.endpoints
    redis = connect(redis_url, settings.queue)
    metrics = _metrics(settings, parts)
    work = WorkSignals(server.gateway_id)
    queue = _queue(settings, redis, work)
    door = FencedDoor()
    replies = ReplyRouter(redis, keys.replies(server.gateway_id), {keys.FENCES: door.lifted, keys.WORK: work.received})
    replies.on_subscribed(work.notify_all)
    cold_starts = ColdStarts(
        durations=RedisDurations(redis), endpoints=endpoints, metrics=metrics, budget_s=_cold_start_budget(catalog)
    )
    client = _runtime_client(server)
    announcements, pool_reports = _replica_news(endpoints, cold_starts, metrics, client)
    keep_alives = KeepAlives(
        store=RedisGapStore(redis),
        metrics=metrics,
        cold_start_s=cold_starts.typical_s,
        shortest_keep_s=settings.queue.scale_interval_s,
    )
    replies.on(wire.REPLICAS_CHANNEL, announcements.received)
    scaler = Scaler(
        catalog=catalog,
        queue=queue,
        fence=Fence(redis),
        backend=backend,
        endpoints=endpoints,
        metrics=metrics,
        cold_starts=cold_starts,
        interval_s=settings.queue.scale_interval_s,
        may_scale_down=lambda: backend.is_leader,
        keep_alives=keep_alives,
        pools=PoolKeeper(
            endpoints=endpoints,
            client=client,
            reports=pool_reports,
            metrics=metrics,
            cold_start_s=cold_starts.typical_s,
            shortest_park_s=settings.queue.scale_interval_s,
        ),
    )
    work.subscribe(scaler.wake)
    catalog.subscribe(lambda: metrics.keep_only({m.name for m in catalog.all()}))
    sender = ReplySender(redis, local=replies)
    limits = ContextLengths(redis)
    dispatchers = Dispatchers(
        catalog,
        lambda model: Dispatcher(
            settings=model,
            queue=queue,
            sender=sender,
            endpoints=endpoints,
            client=client,
            consumer=server.gateway_id,
            metrics=metrics,
            max_attempts=settings.queue.max_attempts,
            is_waiting=replies.is_waiting,
            limits=limits,
            cold_starts=cold_starts,
            tracing=tracing,
        ),
    )
    replies.on(keys.CANCELS, dispatchers.cancelled)
    abandoned = Abandoned()
    gateway = Admission(
        settings=server,
        catalog=catalog,
        queue=queue,
        replies=replies,
        door=door,
        scaler=scaler,
        metrics=metrics,
        abandon=abandoned.add,
        limits=limits,
        cold_starts=cold_starts,
        memory=MemoryGuard(redis, settings.queue.redis_memory_high_water),
        quota=_key_quota(settings),
        tracing=tracing,
    )
    janitor = Janitor(
        queue=queue,
        takeover=Takeover(redis, queue),
        heartbeats=Heartbeats(redis),
        catalog=catalog,
        gateway_id=server.gateway_id,
        interval_s=settings.queue.heartbeat_interval_s,
        held=dispatchers.held,
        is_waiting=replies.is_waiting,
        abandoned=abandoned,
        redis_up=metrics.redis_up.set,
        in_use=lambda model: backend.replicas(model).desired > 0 or bool(dispatchers.held(model)),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await replies.start()
        await announcements.start()
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
            await announcements.stop()
            await pool_reports.stop()
            await cold_starts.drain()
            await keep_alives.drain()
            await replies.stop()
            await client.aclose()
            await redis.aclose()

    app = Starlette(
        routes=routes,
        middleware=_middleware(server, tracing),
        lifespan=lifespan,
        exception_handlers={
            RequestError: error_response,
            HTTPException: error_response,
            Exception: error_response,
        },
    )
    app.state.gateway = gateway
    app.state.scaler = scaler
    app.state.pool_reports = pool_reports
    return app
