"""The whole request path with real parts: gateway over HTTP, Redis, runtime processes running a torch model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import LocalGateway, model, run_gateway
from tests.integration.conftest import chat, completion, sse_events

pytestmark = pytest.mark.integration


async def test_scale_from_zero_and_back(
    redis_url: str, demo_model_dir: Path, cache_dir: Path, client: httpx.AsyncClient
) -> None:
    tiny = model("tiny", demo_model_dir, idle_timeout="1s")
    async with run_gateway([tiny], redis_url, cache_dir, scale_interval_s=0.2) as gw:
        assert gw.backend.replicas("tiny").desired == 0
        for round_ in (1, 2):
            response = await client.post(gw.url + "/v1/completions", json=completion("Once upon a time"))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["object"] == "text_completion"
            assert body["choices"][0]["text"]
            assert body["choices"][0]["finish_reason"] == "length"
            assert body["usage"]["completion_tokens"] == 24
            assert gw.backend.replicas("tiny").desired == 1
            assert gw.metric("kaltstart_cold_starts_total", model="tiny") == round_
            await gw.wait_for(lambda: gw.backend.replicas("tiny").desired == 0, timeout_s=30)


PROMPTS = [f"{'the quick brown fox ' * (i % 5)}story number {i}" for i in range(16)]


async def test_batching_does_not_change_greedy_answers(warm_gateway: LocalGateway, client: httpx.AsyncClient) -> None:
    url = warm_gateway.url + "/v1/completions"
    await client.post(url, json=completion("warm up"))
    batches_before = warm_gateway.metric("kaltstart_batches_total", model="tiny")

    together = await asyncio.gather(*(client.post(url, json=completion(p)) for p in PROMPTS))

    batches = warm_gateway.metric("kaltstart_batches_total", model="tiny") - batches_before
    assert all(r.status_code == 200 for r in together)
    assert batches < len(PROMPTS)
    alone = [await client.post(url, json=completion(p)) for p in PROMPTS]
    assert [r.json()["choices"][0]["text"] for r in together] == [r.json()["choices"][0]["text"] for r in alone]


@pytest.mark.parametrize("kind", ["completion", "chat"])
async def test_stream_deltas_add_up_to_the_plain_answer(
    warm_gateway: LocalGateway, client: httpx.AsyncClient, kind: str
) -> None:
    path, body = ("/v1/completions", completion) if kind == "completion" else ("/v1/chat/completions", chat)
    plain = await client.post(warm_gateway.url + path, json=body("Tell me about the sea"))
    streamed = await client.post(
        warm_gateway.url + path,
        json=body("Tell me about the sea", stream=True, stream_options={"include_usage": True}),
    )
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert len({c["id"] for c in chunks}) == 1
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 24
    if kind == "completion":
        assert all(c["object"] == "text_completion" for c in chunks)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        expected = plain.json()["choices"][0]["text"]
    else:
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        expected = plain.json()["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len(chunks) > 2
    assert text == expected


async def test_openai_sdk(warm_gateway: LocalGateway) -> None:
    sdk = openai.AsyncOpenAI(base_url=warm_gateway.url + "/v1", api_key="unused", max_retries=0)
    models = await sdk.models.list()
    assert [m.id for m in models.data] == ["tiny"]

    text = await sdk.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=0)
    assert text.choices[0].text and text.usage is not None and text.usage.completion_tokens == 8

    answer = await sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    content = answer.choices[0].message.content
    assert content and answer.choices[0].finish_reason == "length"

    stream = await sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True
    )
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts) == content

    with pytest.raises(openai.NotFoundError):
        await sdk.completions.create(model="no-such-model", prompt="Hello")
    await sdk.close()


async def test_sampling_with_a_seed_is_reproducible(warm_gateway: LocalGateway, client: httpx.AsyncClient) -> None:
    url = warm_gateway.url + "/v1/completions"
    body = completion("A seed", temperature=1.0, seed=1234)
    first = await client.post(url, json=body)
    second = await client.post(url, json=body)
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]


async def test_prompt_too_long_for_the_model(warm_gateway: LocalGateway, client: httpx.AsyncClient) -> None:
    url = warm_gateway.url + "/v1/completions"
    response = await client.post(url, json=completion("word " * 5000))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await client.post(url, json=completion("still fine"))).status_code == 200


async def test_metrics_and_health(warm_gateway: LocalGateway, client: httpx.AsyncClient) -> None:
    assert (await client.get(warm_gateway.url + "/healthz")).status_code == 200
    assert (await client.get(warm_gateway.url + "/readyz")).status_code == 200
    metrics = (await client.get(warm_gateway.url + "/metrics")).text
    for name in ("kaltstart_requests_total", "kaltstart_queue_depth", "kaltstart_replicas", "kaltstart_batch_size"):
        assert name in metrics
    assert 'kaltstart_replicas{model="tiny",state="ready"} 1.0' in metrics
