"""Bounded input: a request nested too deeply is refused at the door, and a queue entry nobody can read back fails
alone. Either way the requests queued beside it are dispatched and answered at once, not after the model's
cold-start timeout (before: the whole batch read with such an entry stayed pending until its clients got 503)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import wire
from gateway.queue.stream import QueuedRequest, RequestQueue, Stored
from gateway.relay.messages import Failed
from gateway.relay.transport import ReplyRouter
from gateway.store import keys
from tests.faults.conftest import assert_nothing_left
from tests.harness import LocalGateway, model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = [pytest.mark.faults, pytest.mark.security]

#: Long enough for the echo runtime to start on a busy machine; short enough that a neighbour held up by a bad
#: entry (before: until this timeout) fails the test in reasonable time.
COLD_START_TIMEOUT_S = 30


def nested_schema(levels: int) -> dict[str, Any]:
    """A JSON Schema of objects nested ``levels`` deep (2 JSON levels each)."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def echo_gateway(redis_url: str, cache_dir: Path) -> Any:
    echo = model("echo", "unused", engine="echo", idle_timeout="1s", cold_start_timeout=f"{COLD_START_TIMEOUT_S}s")
    return run_gateway([echo], redis_url, cache_dir, scale_interval_s=0.2)


async def neighbour(client: httpx.AsyncClient, gw: LocalGateway) -> tuple[httpx.Response, float]:
    """An ordinary request to the same model, and how long its answer took."""
    started = time.monotonic()
    body = {"model": "echo", "prompt": "an ordinary neighbour", "max_tokens": 4}
    response = await client.post(gw.url + "/v1/completions", json=body)
    return response, time.monotonic() - started


async def test_a_deeply_nested_schema_does_not_delay_a_neighbours_request(redis_url: str, cache_dir: Path) -> None:
    """The issue's 1.5 KB request: a tool schema ~200 levels deep, sent while the model starts, beside another
    client's request to that model."""
    attack = {
        "model": "echo",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": nested_schema(100)}}],
    }
    async with echo_gateway(redis_url, cache_dir) as gw, httpx.AsyncClient(timeout=120) as client:
        refused = asyncio.create_task(client.post(gw.url + "/v1/chat/completions", json=attack))
        answered, waited_s = await neighbour(client, gw)
        assert answered.status_code == 200, (answered.text, waited_s)
        assert answered.json()["choices"][0]["text"] == "an ordinary neighbour"
        assert waited_s < COLD_START_TIMEOUT_S
        error = assert_openai_error(await refused, 400, "invalid_request_error")
        assert error["param"] == "tools[0].function.parameters"
        await assert_nothing_left(redis_url, "echo")


#: The issue's malformed values (each a 500 with a logged traceback, before), as raw bodies, and the field named.
MALFORMED = [
    ("/v1/chat/completions", '{"model": "echo", "metadata": ' + "[" * 1100 + "]" * 1100 + "}", "metadata"),
    ("/v1/completions", json.dumps({"model": "echo", "prompt": "a", "logit_bias": {"1" * 4400: 1}}), "logit_bias"),
    ("/v1/chat/completions", json.dumps({"model": "echo", "messages": [{"role": "user", "content": "\ud800"}]}),
     "messages[0].content"),
    ("/v1/completions", json.dumps({"model": "echo", "prompt": "\udfff"}), "prompt"),
    ("/v1/completions", json.dumps({"model": "echo", "prompt": "a", "stop": ["\ud800"]}), "stop[0]"),
    ("/v1/completions", json.dumps({"model": "echo", "prompt": "a", "stop": ["x" * 250_000] * 4}), "stop"),
]  # fmt: skip


async def test_malformed_values_are_400s_naming_their_field(
    redis_url: str, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with echo_gateway(redis_url, cache_dir) as gw, httpx.AsyncClient(timeout=60) as client:
        for path, body, param in MALFORMED:
            response = await client.post(gw.url + path, content=body, headers={"content-type": "application/json"})
            assert assert_openai_error(response, 400, "invalid_request_error")["param"] == param
        assert gw.backend.replicas("echo").desired == 0  # nothing was queued: no cold start
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unreadable_entry_fails_alone_and_its_batch_is_dispatched(redis_url: str, cache_dir: Path) -> None:
    """Entries no gateway can read back (one nested past the reader's limit, as an older gateway could queue it
    inline; a request of two choices whose stored prompt nests so; one not JSON; one without a payload) are put
    straight into Redis beside a client's request."""
    redis = Redis.from_url(redis_url)
    router = ReplyRouter(redis, "elsewhere")
    await router.start()
    try:
        async with echo_gateway(redis_url, cache_dir) as gw, httpx.AsyncClient(timeout=120) as client:
            with ExitStack() as expected:
                inboxes = {i: expected.enter_context(router.expect(i)) for i in ("too-deep", *DEEP_BODY_CHOICES)}
                await _add_unreadable_entries(redis)
                answered, waited_s = await neighbour(client, gw)
                assert answered.status_code == 200, (answered.text, waited_s)
                for request_id, inbox in inboxes.items():
                    failed = await asyncio.wait_for(inbox.get(), timeout=10)
                    assert isinstance(failed, Failed) and failed.status == 400, request_id
                    assert (
                        await RequestQueue(redis=redis, max_queue_per_model=1).final_reply("echo", request_id) == failed
                    )
            await assert_nothing_left(redis_url, "echo")
            left = [keys.body("echo", DEEP_BODY_CHOICES[0]), keys.model_held("echo"), keys.model_usage("echo")]
            assert not await redis.exists(*left)  # its body deleted, its charge released
    finally:
        await router.stop()
        await redis.aclose()


#: The choices of the request whose stored prompt nests too deeply.
DEEP_BODY_CHOICES = ("too-deep-body-0", "too-deep-body-1")


async def _add_unreadable_entries(redis: Redis) -> None:
    request = {"id": "too-deep", "messages": [{"role": "user", "content": "hi"}]}
    request["tools"] = [{"type": "function", "function": {"name": "f", "parameters": nested_schema(120)}}]
    payload = {"request": request, "reply_to": "elsewhere", "accepted_at": time.time(), "gateway": "old"}
    stream = keys.queue("echo")
    await redis.xadd(stream, {"r": json.dumps(payload), "i": "too-deep"})
    await _add_too_deep_body(redis, request)
    await redis.xadd(stream, {"r": b"\xff not json"})
    await redis.xadd(stream, {"x": "no payload at all"})


async def _add_too_deep_body(redis: Redis, deep: dict[str, Any]) -> None:
    """A request of two choices stored as a gateway whose door did not bound it would: its body (charged to the
    model) holds the too deep prompt."""
    choices = [
        QueuedRequest(
            request=wire.GenerationRequest(id=i, prompt="stand-in"),
            reply_to="elsewhere",
            accepted_at=time.time(),
            gateway="old",
        )
        for i in DEEP_BODY_CHOICES
    ]
    stored = Stored.of(choices, len(choices))
    await RequestQueue(redis=redis, max_queue_per_model=1000).enqueue_stored("echo", stored)
    await redis.hset(keys.body("echo", stored.id), "0", json.dumps(deep | {"id": stored.id}))
