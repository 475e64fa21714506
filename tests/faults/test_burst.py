"""A burst after a quiet hour: hundreds of requests at once to a model at zero replicas, all buffered through
its cold start and answered, with a healthy Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.faults.conftest import assert_back_at_zero, assert_nothing_left
from tests.harness import model, run_gateway

pytestmark = pytest.mark.faults

BURST = 300


async def test_a_burst_at_cold_start_is_answered_whole(redis_url: str, cache_dir: Path) -> None:
    echo = model("echo", "unused", engine="echo", idle_timeout="1s", max_batch_size=64)
    async with run_gateway([echo], redis_url, cache_dir, scale_interval_s=0.2) as gw:
        assert gw.backend.replicas("echo").desired == 0
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> tuple[int, str]:
                body = {"model": "echo", "prompt": f"request number {i}", "max_tokens": 4}
                async with session.post(gw.url + "/v1/completions", json=body) as response:
                    payload = await response.json()
                    return response.status, payload["choices"][0]["text"] if response.status == 200 else str(payload)

            results = await asyncio.gather(*(one(i) for i in range(BURST)))
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: BURST}, statuses
        # Each client got its own answer (the echo engine answers with the prompt, and every prompt is different).
        assert [text for _, text in results] == [f"request number {i}" for i in range(BURST)]
        assert gw.metric("kaltstart_cold_starts_total", model="echo") == 1
        await assert_nothing_left(redis_url, "echo")
        await assert_back_at_zero(gw, "echo")
