"""The OpenAI features apps send, through the official SDK against a real gateway, Redis and runtime: logprobs,
logit_bias, several choices (n, prompt lists, token prompts), tool calls and structured output, streamed and not,
and clear refusals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.harness import LocalGateway

pytestmark = pytest.mark.integration

HELLO: Any = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def sdk(warm_gateway: LocalGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=warm_gateway.url + "/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


async def test_chat_logprobs_line_up_with_the_completion_tokens(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert answer.usage is not None and len(entries) == answer.usage.completion_tokens == 10
    assert "".join(e.token for e in entries) == choice.message.content
    assert bytes(b for e in entries for b in e.bytes or []).decode() == choice.message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)

    stream = await sdk.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [e async for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content or []]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries])


async def test_completion_logprobs_with_echo(sdk: openai.AsyncOpenAI) -> None:
    prompt = "Once upon a time"
    plain = await sdk.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
    echoed = await sdk.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, temperature=0, logprobs=2, echo=True
    )
    choice = echoed.choices[0]
    assert choice.text == prompt + plain.choices[0].text
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert echoed.usage is not None and len(logprobs.tokens) == echoed.usage.prompt_tokens + 5
    offsets = logprobs.text_offset or []
    assert offsets == [len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]
    assert all(token in top for token, top in zip(logprobs.tokens[1:], logprobs.top_logprobs[1:], strict=True) if top)


async def test_a_bias_of_100_forces_its_token(sdk: openai.AsyncOpenAI, tokenizer: Any) -> None:
    token = tokenizer(" fish", add_special_tokens=False)["input_ids"][-1]
    text = tokenizer.decode([token])
    completion = await sdk.completions.create(
        model="tiny", prompt="Hello", max_tokens=4, temperature=1.0, seed=3, logit_bias={str(token): 100}
    )
    assert completion.choices[0].text == text * 4
    answer = await sdk.chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=4, temperature=0, logit_bias={str(token): 100}
    )
    assert answer.choices[0].message.content == text * 4


async def test_prompt_lists_and_n_give_indexed_choices(sdk: openai.AsyncOpenAI) -> None:
    prompts = ["The sea", "A library"]
    many = await sdk.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    alone = [
        await sdk.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=1.0, seed=7) for p in prompts
    ]
    assert [many.choices[0].text, many.choices[2].text] == [a.choices[0].text for a in alone]
    assert many.choices[1].text != many.choices[0].text, "the second choice samples with its own seed"
    assert many.usage is not None
    assert many.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone if a.usage)
    assert many.usage.completion_tokens == 4 * 6

    again = await sdk.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in many.choices], "a seeded request is reproducible"

    stream = await sdk.completions.create(
        model="tiny", prompt=prompts, n=2, max_tokens=6, temperature=1.0, seed=7, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    texts: dict[int, str] = defaultdict(str)
    finished: dict[int, str | None] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert dict(texts) == {c.index: c.text for c in many.choices}
    assert finished == {0: "length", 1: "length", 2: "length", 3: "length"}
    assert usage is not None and usage.total_tokens == many.usage.total_tokens


async def test_token_prompts(sdk: openai.AsyncOpenAI, tokenizer: Any) -> None:
    ids = tokenizer("Once upon a time")["input_ids"]
    by_text = await sdk.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    by_ids = await sdk.completions.create(model="tiny", prompt=[ids, ids[:3]], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.index for c in by_ids.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError, match="outside this model's vocabulary"):
        await sdk.completions.create(model="tiny", prompt=[1, 10**6], max_tokens=2)


async def test_chat_n_streams_each_choice_with_its_index(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.chat.completions.create(model="tiny", messages=HELLO, n=3, max_tokens=8, seed=1)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    stream = await sdk.chat.completions.create(model="tiny", messages=HELLO, n=3, max_tokens=8, seed=1, stream=True)
    texts: dict[int, str] = defaultdict(str)
    roles: dict[int, str | None] = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            roles.setdefault(c.index, c.delta.role)
    assert dict(texts) == {c.index: c.message.content for c in answer.choices}
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}


async def test_too_many_choices_are_refused_by_name(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="tiny", messages=HELLO, n=17, max_tokens=2)
    assert info.value.param == "n" and "at most 16" in info.value.message
    # Several prompts: they push the count over, so they are named (docs/openai-api.md, `n`).
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.completions.create(model="tiny", prompt=["a"] * 9, n=2, max_tokens=2)
    assert info.value.param == "prompt" and "18 choices" in info.value.message


async def test_an_image_part_is_refused_with_its_param(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        )
    assert info.value.param == "messages[0].content[1].image_url"
    assert info.value.code == "unsupported_parameter"
    assert "Image inputs are not supported by this model" in info.value.message


class Weather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


class Summary(BaseModel):
    title: str = Field(max_length=20)
    stars: int = Field(ge=1, le=5)


WEATHER_TOOL = openai.pydantic_function_tool(Weather, name="weather", description="The weather now")
ASK: Any = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "weather"}}])
async def test_a_forced_tool_call_is_valid_for_its_schema(sdk: openai.AsyncOpenAI, choice: Any) -> None:
    answer = await sdk.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER_TOOL], tool_choice=choice, parallel_tool_calls=False,
        max_tokens=100, temperature=0,
    )  # fmt: skip
    (result,) = answer.choices
    assert result.finish_reason == "tool_calls" and result.message.content is None
    assert result.message.tool_calls is not None
    (call,) = result.message.tool_calls
    assert call.type == "function" and call.function.name == "weather" and call.id.startswith("call_")
    Weather.model_validate_json(call.function.arguments)

    stream = await sdk.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER_TOOL], tool_choice=choice, parallel_tool_calls=False,
        max_tokens=100, temperature=0, stream=True,
    )  # fmt: skip
    arguments: dict[int, str] = defaultdict(str)
    names: dict[int, str | None] = {}
    ids: dict[int, str | None] = {}
    reasons: list[str] = []
    async for chunk in stream:
        for c in chunk.choices:
            reasons += [c.finish_reason] if c.finish_reason else []
            for delta in c.delta.tool_calls or []:
                arguments[delta.index] += (delta.function and delta.function.arguments) or ""
                names[delta.index] = (delta.function and delta.function.name) or names.get(delta.index)
                ids[delta.index] = delta.id or ids.get(delta.index)
    assert reasons == ["tool_calls"]
    assert (dict(arguments), names) == ({0: call.function.arguments}, {0: "weather"}), "greedy: the same call"
    assert list(ids) == [0] and (ids[0] or "").startswith("call_")


async def test_parse_returns_a_pydantic_object(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.chat.completions.parse(
        model="tiny", messages=HELLO, response_format=Summary, max_tokens=60, temperature=0
    )
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Summary) and 1 <= parsed.stars <= 5
    assert answer.choices[0].message.content == parsed.model_dump_json().replace('":', '": ').replace(',"', ', "')


async def test_a_tool_result_turn_is_answered(sdk: openai.AsyncOpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages: Any = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "12 degrees and sunny", "tool_call_id": "call_1"},
    ]
    answer = await sdk.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER_TOOL], max_tokens=8, temperature=0
    )
    (result,) = answer.choices
    assert result.message.content and result.message.tool_calls is None, "the random model answers in words"
    assert result.finish_reason == "length"


async def test_tool_choices_that_cannot_be_met_are_400(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(
            model="tiny", messages=ASK, tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "clock"}},
        )  # fmt: skip
    assert info.value.param == "tool_choice" and "'clock'" in info.value.message
    bad_schema: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    with pytest.raises(openai.BadRequestError, match="cannot be constrained"):
        await sdk.chat.completions.create(model="tiny", messages=HELLO, response_format=bad_schema)


async def test_one_failing_choice_fails_the_request(sdk: openai.AsyncOpenAI, warm_gateway: LocalGateway) -> None:
    prompts = ["A short one", "word " * 600]  # the second is longer than the demo model's context
    with pytest.raises(openai.BadRequestError, match="more than this model's context"):
        await sdk.completions.create(model="tiny", prompt=prompts, max_tokens=40)
    load = await warm_gateway.app.state.gateway._queue.load("tiny")  # the answer came after the choices closed
    assert load.demand == 0, "the other choice was cancelled or answered, not left behind"
    stream = await sdk.completions.create(model="tiny", prompt=prompts, max_tokens=40, stream=True)
    with pytest.raises(openai.APIError, match="more than this model's context"):
        async for _chunk in stream:
            pass
