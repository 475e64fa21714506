"""Clients that leave: while their request waits in a cold start, mid-stream, and mid-generation without
streaming. Their work is cancelled (the runtime drops it at its next decoding step), they are counted as 499 and
never as 200, and they keep no model from scaling to zero."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.store import keys
from tests.faults.conftest import assert_back_at_zero, assert_nothing_left
from tests.harness import LocalGateway, eventually, model, run_gateway

pytestmark = pytest.mark.faults

LONG = 500  # max_tokens of the requests whose clients leave (the demo model's context is 512): far more than they get


def _body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": prompt, "max_tokens": LONG, "temperature": 0} | extra


async def _assert_cancelled(gw: LocalGateway, redis_url: str) -> None:
    await eventually(lambda: gw.metric("kaltstart_cancelled_requests_total", model="tiny", reason="client_gone") == 1)
    assert gw.metric("kaltstart_requests_total", model="tiny", status="499") == 1
    assert gw.metric("kaltstart_requests_total", model="tiny", status="200") == 0
    await assert_nothing_left(redis_url, "tiny")


async def _settled_values(redis_url: str) -> list[bytes | str]:
    redis = Redis.from_url(redis_url)
    try:
        found = [key async for key in redis.scan_iter(keys.settled("tiny", "*"))]
        return [value for value in await redis.mget(found) if value is not None] if found else []
    finally:
        await redis.aclose()


async def test_a_client_that_leaves_during_the_cold_start_is_never_generated(
    redis_url: str, demo_model_dir: Path, cache_dir: Path
) -> None:
    tiny = model("tiny", demo_model_dir, idle_timeout="1s")
    async with run_gateway([tiny], redis_url, cache_dir, scale_interval_s=0.2) as gw, _client() as client:
        request = asyncio.create_task(client.post(gw.url + "/v1/completions", json=_body("never mind")))
        await eventually(lambda: gw.backend.replicas("tiny").desired == 1)  # queued, and a cold start is under way
        request.cancel()  # the client hangs up
        with pytest.raises(asyncio.CancelledError):
            await request
        await _assert_cancelled(gw, redis_url)
        await gw.wait_for(lambda: bool(gw.endpoints.get("tiny")), timeout_s=60)  # the replica comes up...
        await assert_back_at_zero(gw, "tiny")  # ...finds nothing to do, and goes again
        assert gw.metric("kaltstart_batches_total", model="tiny") == 0
        assert await _settled_values(redis_url) == [b"cancelled"]


def _client() -> httpx.AsyncClient:
    """A client that waits out a cold start (httpx's default 5 s is shorter than one on a busy 2-core machine: it
    would leave before its request was ever dispatched)."""
    return httpx.AsyncClient(timeout=60)


async def test_a_client_that_leaves_mid_stream_stops_its_generation(
    redis_url: str, demo_model_dir: Path, cache_dir: Path
) -> None:
    tiny = model("tiny", demo_model_dir, idle_timeout="1s")
    async with run_gateway([tiny], redis_url, cache_dir, scale_interval_s=0.2) as gw, _client() as client:
        chunks = 0
        async with client.stream("POST", gw.url + "/v1/completions", json=_body("Once upon", stream=True)) as stream:
            async for line in stream.aiter_lines():
                chunks += line.startswith("data: {")
                if chunks == 20:
                    break  # the client leaves after 20 chunks
        await eventually(lambda: gw.metric("kaltstart_stopped_on_replica_total", model="tiny") == 1, timeout_s=30)
        # The runtime stopped within a few steps of the cancellation, not after all 500 tokens.
        assert gw.metric("kaltstart_streamed_deltas_total", model="tiny") < 20 + 40
        await _assert_cancelled(gw, redis_url)
        await assert_back_at_zero(gw, "tiny")


async def test_a_client_that_leaves_a_plain_request_stops_its_generation(
    redis_url: str, demo_model_dir: Path, cache_dir: Path
) -> None:
    tiny = model("tiny", demo_model_dir, idle_timeout="1s")
    async with run_gateway([tiny], redis_url, cache_dir, scale_interval_s=0.2) as gw, _client() as client:
        request = asyncio.create_task(client.post(gw.url + "/v1/completions", json=_body("Once upon")))
        await eventually(lambda: gw.metric("kaltstart_batches_total", model="tiny") == 1, timeout_s=60)  # generating
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await eventually(lambda: gw.metric("kaltstart_stopped_on_replica_total", model="tiny") == 1, timeout_s=30)
        await _assert_cancelled(gw, redis_url)
        await assert_back_at_zero(gw, "tiny")
