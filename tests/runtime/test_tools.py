"""Tool calls and structured output on the demo model (its template is Hermes-style): forced calls are valid for
their schema, a tool-result turn is answered, constrained rows share a batch (also joining it mid-flight) without
changing the others, and streamed deltas add up to the finish."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from runtime.output.completion import Completion
from runtime.output.toolcalls import Hermes
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from tests.runtime.support import alone, errors, finishes, greedy, mixed_batch, read_events, run_batch
from wire import (
    BatchEvent,
    ChatMessage,
    ForcedTool,
    FunctionCall,
    FunctionDefinition,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
    Tool,
    ToolCall,
)

pytestmark = pytest.mark.unit


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")

    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(max_length=20)
    stars: int = Field(ge=1, le=5)


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema without its titles: the demo model's context is short."""
    schema = model.model_json_schema()
    schema.pop("title")
    for field in schema["properties"].values():
        field.pop("title")
    return schema


WEATHER = Tool(function=FunctionDefinition(name="weather", parameters=schema_of(Weather)))
CLOCK = Tool(function=FunctionDefinition(name="clock", description="the time now"))
ASK = (ChatMessage(role="user", content="What is the weather in Oslo?"),)


def chat(
    request_id: str, messages: tuple[ChatMessage, ...] = ASK, stream: bool = False, **fields: Any
) -> GenerationRequest:
    params = SamplingParams(max_tokens=80, temperature=0.0)
    return GenerationRequest(id=request_id, messages=messages, params=params, stream=stream, **fields)


def streamed(events: Sequence[BatchEvent], request_id: str) -> tuple[str, list[ToolCall]]:
    tokens = [e for e in events if isinstance(e, TokenEvent) and e.id == request_id]
    return "".join(e.text for e in tokens), [call for e in tokens for call in e.tool_calls]


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_returns_a_valid_call(torch_engine: Any, stream: bool) -> None:
    request = chat(
        "named", tools=(WEATHER, CLOCK), tool_choice=ForcedTool(name="weather"), parallel_tool_calls=False,
        stream=stream,
    )  # fmt: skip
    events = run_batch(torch_engine, [request])
    done = finishes(events)["named"]
    assert done.finish_reason == "tool_calls" and done.text == ""
    (call,) = done.tool_calls
    assert call.function.name == "weather" and call.id.startswith("call_")
    Weather.model_validate_json(call.function.arguments)
    if stream:
        assert streamed(events, "named") == ("", [call])
    assert alone(torch_engine, request) == done, "the same call (and id) when generated again"


def test_required_calls_a_tool_even_with_sampling(torch_engine: Any) -> None:
    request = chat("req", tools=(WEATHER, CLOCK), tool_choice="required", parallel_tool_calls=False)
    request = request.model_copy(update={"params": SamplingParams(max_tokens=80, temperature=1.0, seed=5)})
    done = alone(torch_engine, request)
    assert done.finish_reason == "tool_calls" and len(done.tool_calls) == 1
    call = done.tool_calls[0]
    if call.function.name == "weather":
        Weather.model_validate_json(call.function.arguments)
    else:
        assert call.function.name == "clock" and json.loads(call.function.arguments) == {}


def test_a_tool_result_turn_is_answered(torch_engine: Any) -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="weather", arguments='{"city": "Oslo", "unit": "celsius"}'))
    conversation = (
        *ASK,
        ChatMessage(role="assistant", content=None, tool_calls=(call,)),
        ChatMessage(role="tool", content="12 degrees and sunny", tool_call_id="call_1"),
    )
    done = alone(torch_engine, chat("answer", conversation, tools=(WEATHER,), tool_choice="none"))
    assert done.finish_reason == "length" and done.text and done.tool_calls == ()
    auto = alone(torch_engine, chat("auto", conversation, tools=(WEATHER,)))
    assert auto.finish_reason == "length" and auto.text, "the random model writes no call on its own"


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_answer_is_valid(torch_engine: Any, stream: bool) -> None:
    schema = ResponseFormat(type="json_schema", json_schema=schema_of(Summary))
    events = run_batch(torch_engine, [chat("json", response_format=schema, stream=stream)])
    done = finishes(events)["json"]
    assert done.finish_reason == "stop"
    Summary.model_validate_json(done.text)
    if stream:
        assert streamed(events, "json") == (done.text, [])


def test_what_cannot_be_constrained_is_refused(torch_engine: Any) -> None:
    bad = ResponseFormat(type="json_schema", json_schema={"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
    found = errors(run_batch(torch_engine, [chat("bad", response_format=bad), greedy("ok", prompt="hi")]))
    assert set(found) == {"bad"} and "cannot be constrained" in found["bad"].message


async def test_constrained_rows_join_a_running_batch_as_if_alone(chunked_engine: Any) -> None:
    plain = mixed_batch(6, max_tokens=40)
    before = finishes(run_batch(chunked_engine, plain))
    constrained = [
        chat("named", tools=(WEATHER,), tool_choice=ForcedTool(name="weather"), parallel_tool_calls=False, stream=True),
        chat("json", response_format=ResponseFormat(type="json_schema", json_schema=schema_of(Summary))),
    ]
    scheduler = ContinuousScheduler(chunked_engine, Budget(rows=8, tokens=8192))
    try:
        running = scheduler.submit(plain)
        late = await read_events(scheduler.submit(constrained).lines())
        early = await read_events(running.lines())
    finally:
        scheduler.close()
    assert finishes(early) == before, "rows without a grammar choose what they chose before"
    for request in constrained:
        assert finishes(late)[request.id] == alone(chunked_engine, request)


def test_auto_parses_a_call_the_model_writes_and_streams_no_markup(demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    text = 'Checking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    request = chat("auto", tools=(WEATHER,), stream=True).model_copy(update={"params": SamplingParams(max_tokens=500)})
    completion = Completion(request, 3, lambda i: str(tokenizer.decode(list(i))), tools=Hermes())
    events = [event for token in ids for event in completion.push(token)]
    events += completion.push(tokenizer.eos_token_id, end_of_sequence=True)
    done = finishes(events)["auto"]
    assert done.finish_reason == "tool_calls" and done.text == "Checking."
    (call,) = done.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}
    assert streamed(events, "auto") == ("Checking.", [call])
    assert all("<" not in e.text for e in events if isinstance(e, TokenEvent))
