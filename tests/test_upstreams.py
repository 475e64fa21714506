"""`transformers serve` on CPU with the demo model, asked directly through the official SDK: the independent upstream
the gateway's `protocol = "openai"` tests compare against (docs/upstreams.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.upstreams import transformers_serve

pytestmark = pytest.mark.integration

HELLO: Any = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
async def upstream(demo_model_dir: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with transformers_serve(demo_model_dir) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        yield client
        await client.close()


async def test_chat_greedy_is_repeatable_and_streams_the_same_text(
    upstream: openai.AsyncOpenAI, demo_model_dir: Path
) -> None:
    model = str(demo_model_dir)  # the name it serves the model under: the directory, exactly as on its command line
    first = await upstream.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
    second = await upstream.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
    text = first.choices[0].message.content
    assert text and text == second.choices[0].message.content
    assert first.model == model and first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 12

    stream = await upstream.chat.completions.create(
        model=model, messages=HELLO, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == text
    assert [c.finish_reason for chunk in chunks for c in chunk.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


async def test_completion_greedy_is_repeatable_and_streams_the_same_text(
    upstream: openai.AsyncOpenAI, demo_model_dir: Path
) -> None:
    model = str(demo_model_dir)
    first = await upstream.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    second = await upstream.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    text = first.choices[0].text
    assert text and text == second.choices[0].text

    stream = await upstream.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
    )
    assert "".join([c.text async for chunk in stream for c in chunk.choices]) == text


async def test_it_refuses_another_model_name_and_fields_it_does_not_know(
    upstream: openai.AsyncOpenAI, demo_model_dir: Path
) -> None:
    """What the gateway must rewrite (`upstream-model`), and 4xx it passes through: FastAPI's {"detail": ...}."""
    with pytest.raises(openai.BadRequestError) as wrong_name:
        await upstream.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    body = wrong_name.value.body
    assert isinstance(body, dict) and "pinned" in body["detail"]
    with pytest.raises(openai.UnprocessableEntityError) as unknown_field:
        await upstream.chat.completions.create(
            model=str(demo_model_dir), messages=HELLO, max_tokens=2, extra_body={"guided_json": {"type": "object"}}
        )
    body = unknown_field.value.body
    assert isinstance(body, dict) and "guided_json" in body["detail"]
