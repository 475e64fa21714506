"""A standby runtime (``--standby``) takes its model from ``POST /v1/claim``; a runtime with ``--announce-to``
announces its start phase by phase, its readiness and its stop on Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from starlette.applications import Starlette

from runtime.server.app import create_app
from runtime.server.startup import Readiness
from runtime.settings import RuntimeSettings
from wire import CLAIM_PATH, READY_PATH, REPLICAS_CHANNEL, Announcement, ReadyBody

STANDBY = RuntimeSettings.from_args(["--standby", "--engine", "echo", "--port", "8123"], {})
CLAIM = {"args": ["--engine", "echo", "--model-name", "claimed,alias", "--max-batch-size", "3"]}


@pytest.fixture
async def standby() -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(STANDBY)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        yield app, client


async def decided(app: Starlette) -> Readiness:
    readiness: Readiness = app.state.readiness
    await asyncio.wait_for(readiness.decided.wait(), timeout=30)
    return readiness


@pytest.mark.unit
async def test_a_standby_serves_the_model_it_is_claimed_for(standby: tuple[Starlette, httpx.AsyncClient]) -> None:
    app, client = standby
    waiting = await client.get(READY_PATH)
    assert waiting.status_code == 503

    claimed = await client.post(CLAIM_PATH, json=CLAIM)
    assert (claimed.status_code, claimed.json()) == (202, {"model": "claimed,alias"})
    readiness = await decided(app)
    assert readiness.settings.port == 8123  # its own port, whatever the claim says
    ready = ReadyBody.model_validate_json((await client.get(READY_PATH)).content)
    assert (ready.model, ready.max_batch_size) == ("claimed", 3)
    assert ready.startup is not None and ready.startup.standby
    assert ready.startup.process_s == 0  # paid before the claim
    assert (await client.post(CLAIM_PATH, json=CLAIM)).status_code == 409  # once only


@pytest.mark.unit
async def test_an_invalid_claim_is_refused_and_the_standby_stays_claimable(
    standby: tuple[Starlette, httpx.AsyncClient],
) -> None:
    app, client = standby
    for args in (["--max-batch-size", "0"], ["--standby"], ["--no-such-flag"]):
        refused = await client.post(CLAIM_PATH, json={"args": args})
        assert refused.status_code == 422, args
        assert "invalid claim" in refused.json()["error"]
    assert (await client.post(CLAIM_PATH, json={"argv": []})).status_code == 422  # not a ClaimRequest
    assert (await client.post(CLAIM_PATH, json=CLAIM)).status_code == 202
    await decided(app)


@pytest.mark.unit
async def test_a_runtime_started_with_a_model_cannot_be_claimed() -> None:
    app = create_app(RuntimeSettings.from_args(["--engine", "echo"], {}))
    async with app.router.lifespan_context(app):
        await decided(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            assert (await client.post(CLAIM_PATH, json=CLAIM)).status_code == 409


@pytest.mark.integration
async def test_announcements_follow_the_start_phase_by_phase_then_the_stop(redis_url: str) -> None:
    settings = RuntimeSettings.from_args(
        [
            *("--standby", "--engine", "echo", "--host", "0.0.0.0", "--port", "8124", "--announce-to", redis_url),
            *("--advertise-url", "http://10.1.2.3:8124/", "--announce-interval-s", "30"),
        ],
        {},
    )
    heard: list[Announcement] = []
    async with Redis.from_url(redis_url) as redis, redis.pubsub() as pubsub:
        await pubsub.subscribe(REPLICAS_CHANNEL)
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            await _until(pubsub, heard, lambda a: a.phase == "standby")
            await c.post(CLAIM_PATH, json=CLAIM)
            await _until(pubsub, heard, lambda a: a.state == "ready")
        await _until(pubsub, heard, lambda a: a.state == "stopping")
    assert {a.url for a in heard} == {"http://10.1.2.3:8124"}
    assert heard[0].models == ()  # a standby serves nothing yet
    order = ["cache", "imports", "load", "warmup"]
    phases = [order.index(a.phase) for a in heard if a.state == "starting" and a.models and a.phase]
    assert phases == sorted(phases)  # in start order; quick ones are folded into the next (echo: often all)
    ready = [a for a in heard if a.state == "ready"]
    assert ready[0].models == ("claimed", "alias")
    assert ready[0].ready is not None and ready[0].ready.model == "claimed"
    assert ready[0].interval_s == 30


async def _until(pubsub: PubSub, heard: list[Announcement], done: Callable[[Announcement], bool]) -> None:
    """Read announcements into ``heard`` until one satisfies ``done``."""
    async with asyncio.timeout(20):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            heard.append(Announcement.model_validate(json.loads(message["data"])))
            if done(heard[-1]):
                return
