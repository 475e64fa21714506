"""Bad input, dying replicas, models that never start, full queues: clear errors, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.queue.stream import QueuedRequest, RequestQueue
from tests.harness import model, replica_processes, run_gateway
from tests.integration.conftest import assert_openai_error, completion

pytestmark = pytest.mark.integration


async def test_bad_input(redis_url: str, cache_dir: Path, client: httpx.AsyncClient) -> None:
    echo = model("tiny", "unused", engine="echo")
    async with run_gateway([echo], redis_url, cache_dir, max_body_bytes=4096) as gw:
        url = gw.url + "/v1/completions"
        malformed = await client.post(
            url, content=b'{"model": "tiny", "prompt": ', headers={"content-type": "application/json"}
        )
        assert_openai_error(malformed, 400, "invalid_request_error")
        assert_openai_error(await client.post(url, json={"prompt": "hi"}), 400, "invalid_request_error")
        wrong_type = await client.post(url, json={"model": "tiny", "prompt": "hi", "max_tokens": "many"})
        assert assert_openai_error(wrong_type, 400, "invalid_request_error")["param"] == "max_tokens"
        zero = await client.post(url, json=completion("hi", max_tokens=0))
        assert assert_openai_error(zero, 400, "invalid_request_error")["param"] == "max_tokens"
        chat_without_messages = await client.post(gw.url + "/v1/chat/completions", json={"model": "tiny"})
        assert_openai_error(chat_without_messages, 400, "invalid_request_error")
        assert_openai_error(await client.post(url, json=completion("x" * 5000)), 413, "invalid_request_error")
        unknown = await client.post(url, json=completion("hi", model="gpt-9"))
        assert assert_openai_error(unknown, 404, "invalid_request_error")["code"] == "model_not_found"
        assert_openai_error(await client.get(gw.url + "/v1/nothing-here"), 404, "invalid_request_error")
        assert_openai_error(await client.get(url), 405, "invalid_request_error")

        assert gw.backend.replicas("tiny").desired == 0  # none of that started a replica
        good = await client.post(url, json=completion("still works"))
        assert good.status_code == 200


async def test_replica_killed_mid_batch(
    redis_url: str, demo_model_dir: Path, cache_dir: Path, client: httpx.AsyncClient
) -> None:
    tiny = model("tiny", demo_model_dir, max_batch_delay="200ms", idle_timeout="600s")
    async with run_gateway([tiny], redis_url, cache_dir) as gw:
        url = gw.url + "/v1/completions"
        await client.post(url, json=completion("warm up"))
        prompts = [f"request {i} of the doomed batch" for i in range(4)]
        plain = [asyncio.create_task(client.post(url, json=completion(p, max_tokens=160))) for p in prompts]
        streamed_text = ""
        async with client.stream("POST", url, json=completion(prompts[0], max_tokens=160, stream=True)) as stream:
            lines = stream.aiter_lines()
            async for line in lines:  # wait until generation is under way
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    streamed_text += json.loads(line[6:])["choices"][0]["text"]
                    break
            (replica,) = replica_processes(gw, "tiny")
            replica.kill()
            async for line in lines:
                if line.startswith("data: {"):
                    streamed_text += json.loads(line[6:])["choices"][0]["text"]
        answers = await asyncio.gather(*plain)

        assert [a.status_code for a in answers] == [200] * len(prompts)
        assert gw.metric("kaltstart_redeliveries_total", model="tiny") >= 1
        alone = [await client.post(url, json=completion(p, max_tokens=160)) for p in prompts]
        texts = [a.json()["choices"][0]["text"] for a in answers]
        assert texts == [a.json()["choices"][0]["text"] for a in alone]
        assert streamed_text == texts[0]  # redelivered tokens were not sent to the client twice
        assert gw.metric("kaltstart_requests_total", model="tiny", status="200") == 1 + 2 * len(prompts) + 1
        load = await RequestQueue(redis=Redis.from_url(redis_url), max_queue_per_model=10).load("tiny")
        assert load.demand == 0


async def test_cold_start_timeout(redis_url: str, cache_dir: Path, client: httpx.AsyncClient) -> None:
    broken = model("broken", "/nonexistent/model", cold_start_timeout="3s")
    async with run_gateway([broken], redis_url, cache_dir) as gw:
        started = time.monotonic()
        response = await client.post(gw.url + "/v1/completions", json=completion("hi", model="broken"))
        elapsed = time.monotonic() - started
        assert assert_openai_error(response, 503, "server_error")["code"] == "cold_start_timeout"
        assert int(response.headers["retry-after"]) >= 1
        assert 3.0 <= elapsed < 10.0
        assert gw.backend.replicas("broken").desired == 1  # it asked for a replica at once
        load = await RequestQueue(redis=Redis.from_url(redis_url), max_queue_per_model=10).load("broken")
        assert load.demand == 0  # the abandoned request will not be served to nobody later


async def test_queue_full(redis_url: str, cache_dir: Path, client: httpx.AsyncClient) -> None:
    broken = model("broken", "/nonexistent/model", cold_start_timeout="3s")
    async with run_gateway([broken], redis_url, cache_dir, max_queue_per_model=2) as gw:
        redis = Redis.from_url(redis_url)
        queue = RequestQueue(redis=redis, max_queue_per_model=2)
        for i in range(2):  # two requests already waiting, from other clients
            request = wire.GenerationRequest(id=f"other-{i}", prompt="hi")
            await queue.enqueue("broken", QueuedRequest(request=request, reply_to="elsewhere", accepted_at=time.time()))
        rejected = await client.post(gw.url + "/v1/completions", json=completion("hi", model="broken"))
        assert assert_openai_error(rejected, 429, "rate_limit_error")["code"] == "queue_full"
        assert int(rejected.headers["retry-after"]) >= 1
        assert (await queue.load("broken")).queued == 2
        await redis.aclose()
