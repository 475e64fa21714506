"""Fixtures of the dispatch tests: a roomy queue, a reply router, and rigs of a dispatcher and a fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from redis.asyncio import Redis

from gateway.dispatch.loop import Dispatcher
from gateway.metrics import Metrics
from gateway.queue.stream import RequestQueue
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.replicas.client import HttpxRuntimeClient
from gateway.settings import ModelSettings
from tests.gateway.dispatch.fakes import CHANNEL, MODEL, R1, SETTINGS, Answer, Rig, Runtime
from tests.gateway.replicas.watched import WatchedEndpoints


@pytest.fixture
async def queue(redis: Redis) -> RequestQueue:
    """Room for every request a test queues (the shared fixture allows 3); ``MODEL``'s stream and group exist."""
    q = RequestQueue(redis=redis, max_queue_per_model=100)
    await q.prepare(MODEL)
    return q


@pytest.fixture
async def router(redis: Redis) -> AsyncIterator[ReplyRouter]:
    r = ReplyRouter(redis, CHANNEL, {})
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def make_rig(queue: RequestQueue, redis: Redis) -> AsyncIterator[Callable[[Answer], Rig]]:
    clients: list[httpx.AsyncClient] = []

    def make(answer: Answer, settings: ModelSettings = SETTINGS, local: ReplyRouter | None = None) -> Rig:
        runtime = Runtime(answer)
        client = httpx.AsyncClient(transport=httpx.MockTransport(runtime.handle))
        clients.append(client)
        endpoints = WatchedEndpoints()
        endpoints.set(MODEL, [R1])
        metrics = Metrics()
        sender = ReplySender(redis, local=local)
        dispatcher = Dispatcher(
            settings=settings,
            queue=queue,
            sender=sender,
            endpoints=endpoints,
            client=HttpxRuntimeClient(client),
            consumer="c1",
            metrics=metrics,
            max_attempts=2,
        )
        return Rig(queue, sender, endpoints, metrics, runtime, dispatcher)

    yield make
    for client in clients:
        await client.aclose()
