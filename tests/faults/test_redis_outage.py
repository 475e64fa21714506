"""Redis crashes mid-batch and comes back with its data: waiting clients get their answers, nothing stays
pending, and the model still scales to zero afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.store import keys
from gateway.store.embedded import EmbeddedRedis
from tests.faults.conftest import assert_back_at_zero, assert_nothing_left
from tests.harness import eventually, model, run_gateway

pytestmark = pytest.mark.faults

#: How long Redis stays down: the fault itself, longer than a reply's backstop read (5 s) would need to notice.
OUTAGE_S = 3.0
REQUESTS = 20


@pytest.fixture
def crashable_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _body(i: int, stream: bool = False) -> dict[str, Any]:
    # Greedy, so that asking again gives the very same answer whatever batch it shares. A seeded *sampled* answer
    # may differ once in a while: the random model's next-token distribution is near-uniform, so the logits'
    # last-bit differences between batch shapes move a sampled token across a boundary (docs/reliability.md).
    body = {"model": "tiny", "prompt": f"story {i}:", "max_tokens": 300, "seed": i, "temperature": 0}
    return body | {"stream": stream}


async def _streamed_text(client: httpx.AsyncClient, url: str, i: int, first_token: asyncio.Event) -> str:
    text = ""
    async with client.stream("POST", url, json=_body(i, stream=True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                assert "error" not in chunk, chunk
                text += chunk["choices"][0]["text"]
                first_token.set()
    return text


async def test_waiting_clients_are_answered_after_a_redis_crash(
    crashable_redis: EmbeddedRedis, demo_model_dir: Path, cache_dir: Path
) -> None:
    tiny = model("tiny", demo_model_dir, idle_timeout="2s", max_batch_delay="50ms", max_batch_size=32)
    async with (
        run_gateway([tiny], crashable_redis.url, cache_dir, scale_interval_s=0.2, heartbeat_interval_s=0.5) as gw,
        httpx.AsyncClient(timeout=120) as client,
    ):
        url = gw.url + "/v1/completions"
        assert (await client.post(url, json=_body(1000) | {"max_tokens": 2})).status_code == 200  # warm
        first_token = asyncio.Event()
        streams = [asyncio.create_task(_streamed_text(client, url, i, first_token)) for i in range(REQUESTS // 2)]
        plain = [asyncio.create_task(client.post(url, json=_body(i))) for i in range(REQUESTS // 2, REQUESTS)]
        leaving = asyncio.create_task(_streamed_text(client, url, REQUESTS, asyncio.Event()))
        await asyncio.wait_for(first_token.wait(), 60)  # generation is under way
        # Every request was accepted and dispatched (a continuous replica takes each at once, so the first token
        # can come before the last request was even sent): now Redis dies.
        await eventually(lambda: gw.metric("kaltstart_queue_wait_seconds_count", model="tiny") >= REQUESTS + 2, 60)
        crashable_redis.kill()
        leaving.cancel()  # a client gives up while Redis is down: its cancellation cannot be written yet
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the injected fault's duration
        crashable_redis.start()

        streamed = await asyncio.gather(*streams)
        answers = await asyncio.gather(*plain)
        assert [r.status_code for r in answers] == [200] * len(answers)
        # Each was answered with its own whole text (greedy: asking again gives the very same answer).
        texts = streamed + [answer.json()["choices"][0]["text"] for answer in answers]
        again = await asyncio.gather(*(client.post(url, json=_body(i)) for i in range(REQUESTS)))
        assert texts == [answer.json()["choices"][0]["text"] for answer in again]
        assert len(set(texts)) == REQUESTS  # and the answers tell the prompts apart
        await assert_nothing_left(crashable_redis.url, "tiny")
        await assert_back_at_zero(gw, "tiny")
        # The client that left was cancelled once Redis was back, not generated for nobody.
        assert await _cancelled_count(crashable_redis.url) == 1
        assert gw.metric("kaltstart_requests_total", model="tiny", status="499") == 1


async def _cancelled_count(redis_url: str) -> int:
    """How many requests of the model were settled as cancelled (the others carry their final reply)."""
    redis = Redis.from_url(redis_url)
    try:
        values = [await redis.get(key) async for key in redis.scan_iter(keys.settled("tiny", "*"))]
    finally:
        await redis.aclose()
    return values.count(b"cancelled")
