"""Many models on one gateway (issue #14): idle models cost no Redis command, and warm models hold no Redis
connection each, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

import wire
from gateway.backends import NO_REPLICAS, Replicas
from gateway.catalog import ModelCatalog
from gateway.dispatch.loop import Dispatcher
from gateway.dispatch.supervisor import Dispatchers
from gateway.metrics import Metrics
from gateway.queue.fence import Fence
from gateway.queue.recovery import Abandoned, Heartbeats, Janitor, Takeover
from gateway.queue.stream import QueuedRequest, RequestQueue
from gateway.relay.messages import Finished
from gateway.relay.transport import ReplyRouter, ReplySender
from gateway.replicas.client import HttpxRuntimeClient
from gateway.replicas.coldstarts import ColdStarts, RedisDurations
from gateway.replicas.endpoints import ReadyEndpoints
from gateway.scaling.autoscaler import Scaler
from gateway.settings import ModelSettings

pytestmark = pytest.mark.integration

CHANNEL = "replies:many"
USAGE = wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


class IdleBackend:
    """Every model at zero replicas; records writes (there should be none)."""

    is_leader = True

    def __init__(self) -> None:
        self.writes: list[str] = []

    def replicas(self, model: str) -> Replicas:
        return NO_REPLICAS

    async def scale_up(self, model: str, at_least: int, *, fresh: bool = False) -> bool:
        self.writes.append(model)
        return True

    async def scale_down(self, model: str, to: int) -> bool:
        self.writes.append(model)
        return True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def test_idle_models_cost_no_redis_commands(redis_url: str) -> None:
    """After the first pass (which looks at every model once), the autoscaler and the janitor send Redis nothing
    about models at rest; new work wakes exactly the model it is for."""
    redis = Redis.from_url(redis_url)
    models = [ModelSettings(name=f"idle-{i}") for i in range(20)]
    catalog = ModelCatalog(models)
    queue = RequestQueue(redis=redis, max_queue_per_model=10)
    endpoints, metrics, backend = ReadyEndpoints(), Metrics(), IdleBackend()
    cold = ColdStarts(durations=RedisDurations(redis), endpoints=endpoints, metrics=metrics)
    scaler = Scaler(
        catalog=catalog,
        queue=queue,
        fence=Fence(redis),
        backend=backend,
        endpoints=endpoints,
        metrics=metrics,
        cold_starts=cold,
        interval_s=1.0,
    )
    queue.work.subscribe(scaler.wake)
    janitor = Janitor(
        queue=queue,
        takeover=Takeover(redis, queue),
        heartbeats=Heartbeats(redis),
        catalog=catalog,
        gateway_id="gw",
        interval_s=1.0,
        held=lambda _m: (),
        is_waiting=lambda _id: True,
        abandoned=Abandoned(),
        in_use=lambda m: backend.replicas(m).desired > 0,
    )
    try:
        await scaler.tick()  # the first pass looks at every model once
        commands = await _monitor(redis_url, scaler.tick, janitor.pass_once, scaler.tick, janitor.pass_once)
        assert not [c for c in commands if "{m:idle-" in c], commands
        assert commands  # the monitor saw the janitor's heartbeat, so it did watch

        await queue.enqueue("idle-3", _queued("r"))
        commands = await _monitor(redis_url, scaler.tick)
        assert {c.split("{m:")[1].split("}")[0] for c in commands if "{m:" in c} == {"idle-3"}
        assert backend.writes == ["idle-3"]  # its demand scaled it up
    finally:
        await redis.aclose()


async def _monitor(redis_url: str, *steps: Callable[[], Awaitable[None]]) -> list[str]:
    """The commands Redis received while ``steps`` (coroutine functions) ran one after the other, from MONITOR."""
    watcher = Redis.from_url(redis_url, decode_responses=True)
    marker = f"end-of-window-{time.monotonic_ns()}"
    seen: list[str] = []
    try:
        async with watcher.monitor() as monitor:
            ready = asyncio.Event()

            async def collect() -> None:
                ready.set()
                async for command in monitor.listen():
                    if marker in command["command"]:
                        return
                    seen.append(command["command"])

            collecting = asyncio.create_task(collect())
            await ready.wait()
            for step in steps:
                await step()
            await watcher.echo(marker)  # MONITOR relays commands in order: everything before the marker is in
            await asyncio.wait_for(collecting, timeout=10)
    finally:
        await watcher.aclose()
    return seen


def _queued(request_id: str) -> QueuedRequest:
    return QueuedRequest(
        request=wire.GenerationRequest(id=request_id, prompt="hi"), reply_to=CHANNEL, accepted_at=time.time()
    )


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == wire.READY_PATH:
        report = {"model": "m", "max_batch_size": 8, "context_length": 512, "scheduler": "continuous"}
        return httpx.Response(200, json=report)
    body = wire.BatchRequest.model_validate_json(request.content)
    events = [wire.FinishEvent(id=r.id, text="ok", finish_reason="stop", usage=USAGE) for r in body.requests]
    content = b"".join(e.model_dump_json().encode() + b"\n" for e in events)
    return httpx.Response(200, content=content, headers={"content-type": wire.NDJSON})


async def test_more_warm_models_than_connections_are_all_served(redis_url: str) -> None:
    """12 models with a ready replica each, on a Redis client of 4 connections: every request is answered, and
    while they wait for work no dispatcher holds a connection in a blocking read."""
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=4, timeout=5, client_name="bounded")
    redis, admin = Redis(connection_pool=pool), Redis.from_url(redis_url)
    names = [f"warm-{i}" for i in range(12)]
    catalog = ModelCatalog([ModelSettings(name=n, max_batch_delay_s=0.0) for n in names])
    queue = RequestQueue(redis=redis, max_queue_per_model=10)
    endpoints = ReadyEndpoints()
    for i, name in enumerate(names):
        endpoints.set(name, [f"http://10.0.1.{i}:8000"])
    router = ReplyRouter(redis, CHANNEL, {})
    await router.start()
    http = httpx.AsyncClient(transport=httpx.MockTransport(_answer))
    sender, client = ReplySender(redis, local=router), HttpxRuntimeClient(http)
    dispatchers = Dispatchers(
        catalog,
        lambda s: Dispatcher(
            settings=s,
            queue=queue,
            sender=sender,
            endpoints=endpoints,
            client=client,
            consumer="gw",
            metrics=Metrics(),
            max_attempts=2,
        ),
    )
    try:
        dispatchers.sync()
        for round_ in range(2):  # the second round finds every dispatcher waiting for work
            with contextlib.ExitStack() as stack:
                inboxes = [stack.enter_context(router.expect(f"{n}-{round_}")) for n in names]
                for name in names:
                    await queue.enqueue(name, _queued(f"{name}-{round_}"))
                async with asyncio.timeout(10):
                    for inbox in inboxes:  # "dispatched", then the final reply
                        while not isinstance(await inbox.get(), Finished):
                            pass
            clients = await admin.client_list()
            assert len([c for c in clients if c["name"] == "bounded"]) <= 4
            assert (await admin.info("clients"))["blocked_clients"] == 0
    finally:
        await dispatchers.stop()
        await router.stop()
        await http.aclose()
        await redis.aclose()
        await admin.aclose()
