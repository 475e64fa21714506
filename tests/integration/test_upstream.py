"""A model whose replicas are an OpenAI-compatible server (``protocol = openai``), through the gateway.

The upstream is ``transformers serve`` (transformers' own OpenAI-compatible server, an independent implementation)
on the demo model, started from zero by the local backend as the model's replica: the official SDK gets through
kaltstart what it gets asking that server directly (greedy), streamed or not, chat or completions. What only the
upstream can see (how many requests it held at once, its last body, a client that left) is checked with the tests'
own small server, ``tests.fake_upstream``, started the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from loadtest.children import openai_model
from tests.harness import FAKE_UPSTREAM, LocalGateway, replica_processes, run_gateway

pytestmark = pytest.mark.integration

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
async def served(redis_server: str, demo_model_dir: Path, cache_dir: Path) -> AsyncIterator[LocalGateway]:
    """A gateway whose model ``tiny`` is a ``transformers serve`` replica (started by the first request)."""
    async with run_gateway([openai_model("tiny", demo_model_dir, idle_timeout="600s")], redis_server, cache_dir) as gw:
        yield gw


def _sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


async def _answers(client: openai.AsyncOpenAI, model: str) -> dict[str, Any]:
    """Chat and completion, streamed and not, greedy: the texts, and the model names the answers carry."""
    chat = await client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0)
    completion = await client.completions.create(model=model, prompt="Once upon", max_tokens=8, temperature=0)
    stream = await client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0, stream=True)
    chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return {
        "chat": chat.choices[0].message.content,
        "completion": completion.choices[0].text,
        "streamed": streamed,
        "models": {chat.model, completion.model, *(c.model for c in chunks)},
    }


async def test_a_transformers_serve_replica_from_zero_answers_as_it_does_directly(
    served: LocalGateway, demo_model_dir: Path
) -> None:
    assert served.backend.replicas("tiny").desired == 0
    through = await _answers(_sdk(served.url), "tiny")  # the first request starts the server: a cold start

    (replica,) = replica_processes(served, "tiny")
    assert replica.url is not None
    direct = await _answers(_sdk(replica.url), str(demo_model_dir))

    assert through["chat"] and through["completion"]
    assert {k: through[k] for k in ("chat", "completion", "streamed")} == {
        k: direct[k] for k in ("chat", "completion", "streamed")
    }
    assert through["streamed"] == through["chat"]  # the stream is the answer, event by event
    assert through["models"] == {"tiny"} and direct["models"] == {str(demo_model_dir)}  # the client's name back
    assert served.metric("kaltstart_cold_starts_total", model="tiny") >= 1


async def test_the_upstream_validates_the_body_and_its_refusal_is_passed_through(served: LocalGateway) -> None:
    """For an ``openai`` model the gateway checks only what it relies on (``stream``); the rest is the upstream's to
    judge, and its refusal (status and OpenAI error) reaches the client as it was."""
    async with httpx.AsyncClient(timeout=120) as client:
        base = {"model": "tiny", "messages": CHAT, "max_tokens": 4}
        ours = await client.post(f"{served.url}/v1/chat/completions", json=base | {"stream": "yes"})
        theirs = await client.post(f"{served.url}/v1/chat/completions", json=base | {"temperature": "hot"})
        unknown = await client.post(f"{served.url}/v1/chat/completions", json=base | {"no_such_field": 1})
    assert ours.status_code == 400 and ours.json()["error"]["param"] == "stream"
    assert theirs.status_code == 400 and "'hot'" in theirs.json()["error"]["message"]
    assert unknown.status_code == 422 and "no_such_field" in unknown.json()["error"]["message"]


@pytest.fixture
async def fake(
    redis_url: str, demo_model_dir: Path, cache_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocalGateway]:
    """A gateway whose model ``up`` is the tests' own upstream, its settings from the test's ``upstream`` marker
    (not named ``tiny``: the module's other gateway shares the Redis, and its dispatchers would take the requests)."""
    marker = request.node.get_closest_marker("upstream")
    settings: dict[str, Any] = {"idle_timeout": "600s", **(marker.kwargs if marker else {})}
    command = (*FAKE_UPSTREAM, "--token-delay", str(settings.pop("token_delay", 0.02)))
    up = openai_model("up", demo_model_dir, command=command, **settings)
    async with run_gateway([up], redis_url, cache_dir) as gw:
        yield gw


async def _stats(gw: LocalGateway) -> dict[str, Any]:
    (replica,) = replica_processes(gw, "up")
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{replica.url}/stats")).json()
    return stats


@pytest.mark.upstream(upstream_model="served-name")
async def test_the_body_goes_upstream_as_sent_but_for_the_model_name(fake: LocalGateway) -> None:
    extra = {"guided_json": {"type": "object"}, "chat_template_kwargs": {"enable_thinking": False}, "top_k": 3}
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"model": "up", "messages": CHAT, "max_tokens": 3} | extra
        answer = await client.post(f"{fake.url}/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "up" and answer.json()["choices"][0]["message"]["content"] == "w0 w1 w2"
    seen = (await _stats(fake))["last_body"]
    assert seen == body | {"model": "served-name"}  # fields we do not know, untouched


async def test_a_refusal_in_another_shape_becomes_an_openai_error(fake: LocalGateway) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"model": "up", "prompt": "x", "max_tokens": 3, "refuse": "no"}
        answer = await client.post(f"{fake.url}/v1/completions", json=body)
        streamed = await client.post(f"{fake.url}/v1/completions", json=body | {"stream": True})
    for refused in (answer, streamed):  # a stream refused before it began gets the status too
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == {
            "message": "refused: no", "type": "invalid_request_error", "param": None, "code": None
        }  # fmt: skip


@pytest.mark.upstream(max_concurrency=2, token_delay=0.05)
async def test_no_more_than_max_concurrency_requests_in_flight_per_replica(fake: LocalGateway) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"model": "up", "prompt": "x", "max_tokens": 4}
        answers = await asyncio.gather(*(client.post(f"{fake.url}/v1/completions", json=body) for _ in range(7)))
    assert [a.status_code for a in answers] == [200] * 7
    stats = await _stats(fake)
    assert stats["started"] == stats["finished"] == 7
    assert stats["max_in_flight"] == 2  # the rest waited in the queue, none was refused
