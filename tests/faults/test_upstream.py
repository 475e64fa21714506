"""Faults with an OpenAI-compatible upstream (``protocol = openai``): a burst at a cold model (``transformers
serve``, started from zero), a client that leaves mid-stream, and an upstream killed before and after it began to
answer (the tests' own server, ``tests.fake_upstream``, whose ``/stats`` says what it saw). Each ends with the
promise: every request answered once or clearly failed, never a stream spliced from two attempts, nothing left in
Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from loadtest.children import openai_model
from tests.faults.conftest import assert_back_at_zero, assert_nothing_left
from tests.harness import FAKE_UPSTREAM, LocalGateway, eventually, replica_processes, run_gateway

pytestmark = pytest.mark.faults


async def test_a_burst_at_a_cold_transformers_serve_model_is_answered_once_each(
    redis_url: str, demo_model_dir: Path, cache_dir: Path
) -> None:
    tiny = openai_model("tiny", demo_model_dir, idle_timeout="2s")
    async with run_gateway([tiny], redis_url, cache_dir, scale_interval_s=0.2) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=120)
        prompts = [f"Story number {i}:" for i in range(6)]
        answers = await asyncio.gather(
            *(client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0) for p in prompts)
        )
        assert all(a.choices[0].text and a.model == "tiny" for a in answers)
        assert gw.metric("kaltstart_requests_total", model="tiny", status="200") == 6
        assert gw.metric("kaltstart_cold_starts_total", model="tiny") == 1  # one server started for all six
        await assert_nothing_left(redis_url, "tiny")
        await assert_back_at_zero(gw, "tiny")


@pytest.fixture
async def fake(redis_url: str, demo_model_dir: Path, cache_dir: Path) -> AsyncIterator[LocalGateway]:
    """A gateway whose model ``up`` is the tests' own upstream, answering a word every 0.1 s."""
    command = (*FAKE_UPSTREAM, "--token-delay", "0.1")
    up = openai_model("up", demo_model_dir, command=command, idle_timeout="600s")
    async with run_gateway([up], redis_url, cache_dir) as gw:
        yield gw


def _body(stream: bool, max_tokens: int = 100) -> dict[str, Any]:
    return {"model": "up", "prompt": "x", "max_tokens": max_tokens, "stream": stream}


async def _stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{url}/stats")).json()
    return stats


async def _until(
    read: Callable[[], Awaitable[dict[str, Any]]], done: Callable[[dict[str, Any]], bool], timeout_s: float = 10
) -> dict[str, Any]:
    """``read()`` again until ``done`` says yes (a poll of the upstream's ``/stats``, with a deadline)."""
    async with asyncio.timeout(timeout_s):
        while not done(found := await read()):  # noqa: ASYNC110 - another process's state: nothing to wait on
            await asyncio.sleep(0.05)
    return found


def _replica_url(gw: LocalGateway) -> str:
    (replica,) = replica_processes(gw, "up")
    assert replica.url is not None
    return replica.url


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_connection(
    fake: LocalGateway, redis_url: str
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("POST", f"{fake.url}/v1/completions", json=_body(stream=True)) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: {"):
                    break  # the client leaves after its first word (of 100: 10 s more)
        url = _replica_url(fake)
        stats = await _until(lambda: _stats(url), lambda s: s["disconnected"] > 0)  # the upstream noticed
        assert (stats["started"], stats["disconnected"], stats["finished"], stats["in_flight"]) == (1, 1, 0, 0)
        await eventually(lambda: fake.metric("kaltstart_requests_total", model="up", status="499") == 1)
        await assert_nothing_left(redis_url, "up")
        # The slot is free again: the next request is answered.
        answer = await client.post(f"{fake.url}/v1/completions", json=_body(stream=False, max_tokens=2))
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "w0 w1"


async def test_an_upstream_killed_before_it_answered_has_the_request_retried(
    fake: LocalGateway, redis_url: str
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        warm = await client.post(f"{fake.url}/v1/completions", json=_body(stream=False, max_tokens=1))
        assert warm.status_code == 200
        first_url = _replica_url(fake)
        request = asyncio.create_task(client.post(f"{fake.url}/v1/completions", json=_body(False, max_tokens=20)))
        await eventually(lambda: fake.metric("kaltstart_queue_wait_seconds_count", model="up") == 2)
        (replica,) = replica_processes(fake, "up")
        replica.kill()  # mid-generation, before a byte of the answer (it comes whole after 2 s)
        answer = await request
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"].split() == [f"w{i}" for i in range(20)]
    assert fake.metric("kaltstart_redeliveries_total", model="up") == 1
    assert _replica_url(fake) != first_url  # a new server process, on a new port...
    second = await _stats(_replica_url(fake))
    assert (second["started"], second["finished"]) == (1, 1)  # ...answered it, once
    await assert_nothing_left(redis_url, "up")


async def test_an_upstream_killed_mid_stream_ends_the_stream_with_an_error_never_a_second_attempt(
    fake: LocalGateway, redis_url: str
) -> None:
    events: list[str] = []
    body = _body(stream=True)
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{fake.url}/v1/completions", json=body) as stream,
    ):
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if len(events) == 3:
                    replica_processes(fake, "up")[0].kill()
    words = [json.loads(e)["choices"][0]["text"] for e in events if e.startswith('{"id"')]
    assert words == [f" w{i}" for i in range(len(words))] and 3 <= len(words) < 100  # one attempt's words, in order
    error = json.loads(events[-2])["error"]
    assert events[-1] == "[DONE]" and error["code"] == "generation_failed" and "streaming" in error["message"]
    assert fake.metric("kaltstart_redeliveries_total", model="up") == 0
    assert fake.metric("kaltstart_requests_total", model="up", status="502") == 1
    await assert_nothing_left(redis_url, "up")
