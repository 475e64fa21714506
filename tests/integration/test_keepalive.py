"""The adaptive keep-alive through a real gateway and real runtime processes: a model called periodically is
scaled down soon after each call and pre-warmed, without any request, in time for the next."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from gateway.store import keys
from tests.harness import model, run_gateway

pytestmark = pytest.mark.integration

ECHO = {"model": "echo", "prompt": "every twelve seconds", "max_tokens": 3, "temperature": 0}
#: What an earlier gateway learned: a caller back every 12 s. Kept in Redis, read back at the model's first look.
PERIOD_MS = 12_000


async def test_a_periodic_model_is_pre_warmed_before_its_next_request(redis_url: str, cache_dir: Path) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.rpush(keys.idle_gaps("echo"), *[PERIOD_MS] * 20)
    finally:
        await redis.aclose()
    # The fixed timeout (600 s) would keep the replica through every gap; the learned policy drops it after ~2 s.
    echo = model("echo", "unused", engine="echo", idle_policy="adaptive", idle_timeout="600s", cold_start_cost="300s")
    async with (
        run_gateway([echo], redis_url, cache_dir, scale_interval_s=0.2) as gw,
        httpx.AsyncClient(timeout=60) as client,
    ):
        response = await client.post(gw.url + "/v1/completions", json=ECHO)  # a cold start, measured
        assert response.status_code == 200, response.text
        assert gw.endpoints.get("echo")

        await gw.wait_for(lambda: not gw.endpoints.get("echo"), timeout_s=10)  # dropped soon after the call
        assert gw.metric("kaltstart_keep_alive_learned", model="echo") == 1
        await gw.wait_for(lambda: bool(gw.endpoints.get("echo")), timeout_s=20)  # back before the next call
        assert gw.metric("kaltstart_prewarms_total", model="echo") == 1

        response = await client.post(gw.url + "/v1/completions", json=ECHO)
        assert response.status_code == 200, response.text
        # Only the first call waited for a replica to become ready; the second found one pre-warmed.
        assert gw.metric("kaltstart_cold_start_seconds_count", model="echo", phase="ready_to_dispatch") == 1
        assert gw.metric("kaltstart_keep_alive_seconds", model="echo", window="prewarm_at") > 0
