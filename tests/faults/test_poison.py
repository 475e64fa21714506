"""A poison request: one that kills its runtime replica on every attempt. It is failed with a clear error after
``max-attempts``, recorded, and the requests that shared its first batch are answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import assert_back_at_zero, assert_nothing_left
from tests.harness import model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = pytest.mark.faults


async def test_a_poison_request_fails_alone_and_blocks_nobody(redis_url: str, cache_dir: Path) -> None:
    echo = model(
        "echo", "unused", engine="echo", args=("--fault-exit-on", "POISON"), idle_timeout="1s", max_batch_delay="300ms"
    )
    async with (
        run_gateway([echo], redis_url, cache_dir, scale_interval_s=0.2, max_attempts=3) as gw,
        httpx.AsyncClient(timeout=120) as client,
    ):
        url = gw.url + "/v1/completions"

        async def ask(prompt: str) -> httpx.Response:
            return await client.post(url, json={"model": "echo", "prompt": prompt, "max_tokens": 8})

        # They arrive within one batching window, so the first batch holds them all.
        innocent = [asyncio.create_task(ask(f"innocent request {i}")) for i in range(4)]
        poison = asyncio.create_task(ask("this one is POISON for the replica"))
        answers = await asyncio.gather(*innocent)
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.json()["choices"][0]["text"] for a in answers] == [f"innocent request {i}" for i in range(4)]
        failed = await poison
        assert assert_openai_error(failed, 502, "server_error")["code"] == "generation_failed"
        assert gw.metric("kaltstart_poison_requests_total", model="echo") == 1
        # The poison did share a batch with the others: one batch of all five, and each retry went alone after it.
        batches = gw.metric("kaltstart_batch_size_count", model="echo")
        assert batches - gw.metric("kaltstart_batch_size_bucket", model="echo", le="4.0") == 1
        assert gw.metric("kaltstart_batch_size_sum", model="echo") == 5 + (batches - 1)
        await assert_nothing_left(redis_url, "echo")
        await assert_back_at_zero(gw, "echo")
