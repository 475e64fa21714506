"""Forged replica announcements against a real gateway and a real runtime process: whoever may publish on the
replicas channel (every model pod, in a cluster) announces things about a real replica of another model. The
runtime's own announcements are off and the backend's readiness probe is paused, so the replica counts as ready
only through announcements: whatever the forger says is the gateway's only word about it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.backends.local import backend as local
from gateway.processes import probe_until_ready
from gateway.store import keys
from tests.harness import LocalGateway, eventually, model, replica_processes, run_gateway

pytestmark = [pytest.mark.integration, pytest.mark.security]

ECHO = {"model": "echo", "prompt": "forged", "max_tokens": 3, "temperature": 0}


async def publish(redis: Redis, *messages: str) -> None:
    for message in messages:
        await redis.publish(wire.REPLICAS_CHANNEL, message)


async def served(gw: LocalGateway) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.post(gw.url + "/v1/completions", json=ECHO)).status_code


async def replica_url(gw: LocalGateway) -> str:
    """The echo replica's URL, once its own /readyz answers 200."""
    await eventually(lambda: any(r.url for r in replica_processes(gw, "echo")), timeout_s=30)
    (replica,) = replica_processes(gw, "echo")
    assert replica.url is not None
    await probe_until_ready(replica.url + wire.READY_PATH, exited=lambda: False, period_s=0.05, timeout_s=30)
    return replica.url


async def test_forged_announcements_about_a_real_replica_change_nothing(
    redis_url: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "READY_PROBE_S", 3600.0)  # the probe fails once, then would wait an hour
    redis = Redis.from_url(redis_url)
    async with run_gateway([model("echo", "unused", engine="echo")], redis_url, cache_dir, announce=False) as gw:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(gw.url + "/v1/completions", json=ECHO))  # a cold start
            url = await replica_url(gw)
            real = wire.ReadyBody.model_validate_json((await client.get(url + wire.READY_PATH)).content)
            # A fake ready report: another model's name, a context of 1 token, an interval that never lapses.
            fake = real.model_copy(update={"model": "evil", "context_length": 1})
            announced = wire.Announcement(
                url=url, models=("echo",), state="ready", elapsed_s=1.0, interval_s=60.0, ready=fake
            )
            await publish(redis, announced.model_dump_json().replace('"interval_s":60.0', '"interval_s":1e9'))
            await publish(redis, announced.model_dump_json())
            assert (await first).status_code == 200
        assert int(await redis.get(keys.context_length("echo")) or 0) == real.context_length  # not 1
        assert await served(gw) == 200

        stopping = wire.Announcement(url=url, models=("echo",), state="stopping", elapsed_s=1.0, interval_s=1.0)
        await publish(redis, stopping.model_dump_json())
        await eventually(lambda: gw.metric("kaltstart_replica_announcements_total", outcome="unconfirmed") == 1)
        assert gw.endpoints.get("echo") == (url,)
        assert await served(gw) == 200

        # The review's 1.2 MB announcement: the replica "starting" again, under 100,001 names.
        names = ("echo", *(f"model-{i}" for i in range(100_000)))
        huge = wire.Announcement.model_construct(
            url=url, models=names, state="starting", phase="load", elapsed_s=1.0, interval_s=1.0, ready=None
        )
        await publish(redis, huge.model_dump_json())
        await eventually(lambda: gw.metric("kaltstart_replica_announcements_total", outcome="oversized") == 1)
        assert gw.endpoints.get("echo") == (url,)
        assert await served(gw) == 200
    await redis.aclose()
