"""Request validation: what is accepted, what is refused and how the refusal reads; and the table in the docs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import wire
from gateway.api.refusals import IGNORED
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest, Message, StreamOptions, parse_request
from gateway.errors import InvalidRequest, Unsupported

pytestmark = pytest.mark.unit

DOCS = Path(__file__).parents[3] / "docs" / "openai-api.md"


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages) or [{"role": "user", "content": "hi"}]} | fields


def refusal(schema: type[CompletionRequest] | type[ChatCompletionRequest], body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(schema, body)
    assert info.value.status_code == 400
    return info.value


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "hi"}, "model", "Missing required parameter: 'model'"),
        ({"model": "m"}, "prompt", "Missing required parameter: 'prompt'"),
        ({"model": "m", "prompt": 3}, "prompt", "must be a string, an array of strings"),
        ({"model": "m", "prompt": ["a", 1]}, "prompt", "not a mix"),
        ({"model": "m", "prompt": [[1], []]}, "prompt", "non-empty arrays of token ids"),
        ({"model": "m", "prompt": [-1]}, "prompt", "integers of at least 0"),
        ({"model": "m", "prompt": []}, "prompt", "must be a string"),
        ({"model": "m", "prompt": "hi", "max_tokens": 0}, "max_tokens", "must be at least 1"),
        ({"model": "m", "prompt": "hi", "max_tokens": "many"}, "max_tokens", "expected an integer"),
        ({"model": "m", "prompt": "hi", "temperature": 3}, "temperature", "must be at most 2"),
        ({"model": "m", "prompt": "hi", "n": 0}, "n", "must be at least 1"),
        ({"model": "m", "prompt": "hi", "n": 129}, "n", "must be at most 128"),
        ({"model": "m", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
        ({"model": "m", "prompt": "hi", "stop": 5}, "stop", "must be a string or an array of strings"),
        ({"model": "m", "prompt": "hi", "logprobs": 6}, "logprobs", "must be at most 5"),
        ({"model": "m", "prompt": "hi", "logprobs": True}, "logprobs", "expected an integer"),
        ({"model": "m", "prompt": "hi", "presence_penalty": -2.5}, "presence_penalty", "at least -2"),
        ({"model": "m", "prompt": "hi", "frequency_penalty": 2.5}, "frequency_penalty", "at most 2"),
        ({"model": "m", "prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias", "keys must be token ids"),
        ({"model": "m", "prompt": "hi", "logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100"),
        ({"model": "m", "prompt": "hi", "top_k": 5}, "top_k", "Unrecognized request argument supplied: top_k"),
    ],
)
def test_completion_errors_name_the_param_in_words(body: dict[str, Any], param: str, words: str) -> None:
    error = refusal(CompletionRequest, body)
    assert error.param == param
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (chat({"role": "user", "content": 3}), "messages[0].content", "a string or an array of content parts"),
        (chat({"role": "user", "content": [{"type": "text"}]}), "messages[0].content", "content parts must be"),
        (chat({"role": "bot", "content": "x"}), "messages[0].role", "must be 'system', 'user'"),
        (chat({"role": "user"}), "messages[0].content", "A message with role 'user' needs 'content'"),
        (chat({"role": "assistant", "content": None}), "messages[0].content", "needs 'content' or 'tool_calls'"),
        (chat({"role": "tool", "content": "42"}), "messages[0].tool_call_id", "needs 'tool_call_id'"),
        (chat({"role": "user", "content": "x", "tool_call_id": "c"}), "messages[0].tool_call_id", "Only tool"),
        (chat({"role": "user", "content": "x", "mood": "ok"}), "messages[0].mood", "Unrecognized request argument"),
        (chat(top_logprobs=2), "top_logprobs", "'top_logprobs' needs 'logprobs' to be true"),
        (chat(logprobs=True, top_logprobs=21), "top_logprobs", "must be at most 20"),
        (chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage", "expected a boolean"),
        ({"model": "m", "messages": []}, "messages", "must have at least 1 item"),
    ],
)
def test_chat_errors_name_the_param_in_words(body: dict[str, Any], param: str, words: str) -> None:
    error = refusal(ChatCompletionRequest, body)
    assert error.param == param
    assert words in error.message
    assert not isinstance(error, Unsupported)


PYDANTIC_WORDS = re.compile(r"Input should|list\[|\bstr\b|function-|tagged-union|Value error|validation error")


@pytest.mark.parametrize(
    "body",
    [
        chat({"role": "user", "content": "a"}, {"role": "assistant", "content": 5}),
        chat({"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "custom"}]}),
        chat({"role": "assistant", "content": None, "tool_calls": "f"}),
        chat(response_format={"type": "yaml"}),
        chat(messages="hi"),
        chat(stop=[1]),
        chat(n=1.5),
        chat(metadata={"a": 1}),
    ],
)
def test_no_message_shows_validation_internals(body: dict[str, Any]) -> None:
    error = refusal(ChatCompletionRequest, body)
    assert not PYDANTIC_WORDS.search(error.message), error.message
    assert error.param and not PYDANTIC_WORDS.search(error.param), error.param


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            chat({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}),
            "messages[0].content[1].image_url",
            "Image inputs are not supported by this model",
        ),
        (
            chat({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
            "messages[0].content[0].input_audio",
            "Audio inputs are not supported",
        ),
        (chat({"role": "user", "content": [{"type": "file", "file": {}}]}), "messages[0].content[0].file", "File"),
        (chat(functions=[{"name": "f"}]), "functions", "Function calling ('functions', deprecated; use 'tools')"),
        (chat(function_call="auto"), "function_call", "use 'tool_choice'"),
        (chat(audio={"voice": "x"}), "audio", "Audio output"),
        (chat(modalities=["text", "audio"]), "modalities", "Only text output"),
        (chat(reasoning_effort="low"), "reasoning_effort", "'reasoning_effort'"),
        (chat(web_search_options={}), "web_search_options", "Web search"),
        (chat(moderation={"input": {"mode": "block"}}), "moderation", "Moderation"),
        (chat({"role": "function", "content": "x", "name": "f"}), "messages[0].role", "'function' role"),
        (chat({"role": "assistant", "audio": {"id": "a"}}), "messages[0].audio", "Audio in messages"),
    ],
)
def test_unsupported_chat_features_are_refused_by_name(body: dict[str, Any], param: str, words: str) -> None:
    error = refusal(ChatCompletionRequest, body)
    assert isinstance(error, Unsupported) and error.code == "unsupported_parameter"
    assert error.param == param
    assert words in error.message


def test_unsupported_completion_features_are_refused_by_name() -> None:
    assert refusal(CompletionRequest, {"model": "m", "prompt": "a", "suffix": "b"}).param == "suffix"
    assert refusal(CompletionRequest, {"model": "m", "prompt": "a", "best_of": 3}).param == "best_of"
    parse_request(CompletionRequest, {"model": "m", "prompt": "a", "best_of": 2, "n": 2, "suffix": ""})


def test_fields_that_change_nothing_are_accepted() -> None:
    body = chat(
        user="u",
        store=False,
        metadata={"k": "v"},
        service_tier="auto",
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        prompt_cache_options={"ttl": "1h"},
        safety_identifier="s",
        prediction={"type": "content", "content": "x"},
        response_format={"type": "text"},
        tool_choice="none",
        tools=[],
        parallel_tool_calls=False,
        modalities=["text"],
        stream_options={"include_usage": True, "include_obfuscation": False},
        temperature=None,
        seed=None,
    )
    parsed = parse_request(ChatCompletionRequest, body)
    assert parsed.sampling_params(10, seed=3) == wire.SamplingParams(max_tokens=10, seed=3)


def test_prompt_shapes_become_one_input_each() -> None:
    def inputs(prompt: Any, **fields: Any) -> list[dict[str, Any]]:
        return parse_request(CompletionRequest, {"model": "m", "prompt": prompt} | fields).inputs()

    assert inputs("a") == [{"prompt": "a", "echo": False}]
    assert inputs(["a", "b"]) == [{"prompt": "a", "echo": False}, {"prompt": "b", "echo": False}]
    assert inputs([1, 2], echo=True) == [{"prompt_token_ids": (1, 2), "echo": True}]
    assert inputs([[1], [2, 3]]) == [
        {"prompt_token_ids": (1,), "echo": False},
        {"prompt_token_ids": (2, 3), "echo": False},
    ]


def test_sampling_parameters_reach_the_wire() -> None:
    body = {
        "model": "m",
        "prompt": "a",
        "logprobs": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -1,
        "logit_bias": {"7": 100, "9": -100.0},
        "stop": "x",
        "max_tokens": 5,
    }
    params = parse_request(CompletionRequest, body).sampling_params(16, seed=1)
    assert params == wire.SamplingParams(
        max_tokens=5,
        stop=("x",),
        seed=1,
        logprobs=3,
        presence_penalty=0.5,
        frequency_penalty=-1.0,
        logit_bias={7: 100.0, 9: -100.0},
    )
    assert parse_request(CompletionRequest, {"model": "m", "prompt": "a"}).sampling_params(16, 1).logprobs is None
    wanted = parse_request(ChatCompletionRequest, chat(logprobs=True, top_logprobs=4)).sampling_params(16, 1)
    assert wanted.logprobs == 4
    assert parse_request(ChatCompletionRequest, chat(logprobs=True)).sampling_params(16, 1).logprobs == 0
    assert parse_request(ChatCompletionRequest, chat(logprobs=False)).sampling_params(16, 1).logprobs is None


def test_chat_to_wire_flattens_parts_and_keeps_tool_turns() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    body = chat(
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "assistant", "refusal": "no"},
        max_completion_tokens=7,
    )
    parsed = parse_request(ChatCompletionRequest, body)
    (inputs,) = parsed.inputs()
    tool_call = wire.ToolCall(id="call_1", function=wire.FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
    assert inputs["messages"] == (
        wire.ChatMessage(role="user", content="ab", name="ann"),
        wire.ChatMessage(role="assistant", content=None, tool_calls=(tool_call,)),
        wire.ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
        wire.ChatMessage(role="assistant", content="no"),
    )
    assert parsed.sampling_params(99, seed=1).max_tokens == 7


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}, "strict": True}}


def test_tools_choices_and_formats_reach_the_wire() -> None:
    def wired(**fields: Any) -> dict[str, Any]:
        (prompt,) = parse_request(ChatCompletionRequest, chat(**fields)).inputs()
        return {key: value for key, value in prompt.items() if key != "messages"}

    tool = wire.Tool(function=wire.FunctionDefinition(name="weather", parameters={"type": "object"}))
    assert wired(tools=[WEATHER]) == {"tools": (tool,)}
    named = {"type": "function", "function": {"name": "weather"}}
    assert wired(tools=[WEATHER], tool_choice=named, parallel_tool_calls=False) == {
        "tools": (tool,),
        "tool_choice": wire.ForcedTool(name="weather"),
        "parallel_tool_calls": False,
    }
    assert wired(tools=[WEATHER], tool_choice="required")["tool_choice"] == "required"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    assert wired(response_format=structured) == {
        "response_format": wire.ResponseFormat(type="json_schema", json_schema=schema)
    }
    assert wired(response_format={"type": "json_object"}) == {
        "response_format": wire.ResponseFormat(type="json_object")
    }
    assert wired(response_format={"type": "text"}) == {"response_format": None}
    for fields in ({"tools": [WEATHER], "tool_choice": "required"}, {"response_format": structured}):
        (prompt,) = parse_request(ChatCompletionRequest, chat(**fields)).inputs()
        wire.GenerationRequest(id="x", **prompt)


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools' are specified"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "clock"}}},
            "tool_choice",
            "'clock'",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "Invalid value"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "needs 'json_schema'"),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice", "Invalid value"),
    ],
)
def test_tool_choices_and_formats_that_cannot_be_met_are_400(fields: dict[str, Any], param: str, words: str) -> None:
    error = refusal(ChatCompletionRequest, chat(**fields))
    assert error.param == param and words in error.message, (error.param, error.message)
    assert not PYDANTIC_WORDS.search(error.message)


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest):
        parse_request(CompletionRequest, ["model"])


def _documented_fields() -> set[str]:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    return {line.split("`")[1] for line in rows}


def test_every_request_field_is_in_the_docs_table() -> None:
    documented = _documented_fields()
    fields = set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields) | set(IGNORED)
    fields |= {f"stream_options.{name}" for name in StreamOptions.model_fields}
    fields.discard("stream_options")
    missing = fields - documented
    assert not missing, f"docs/openai-api.md has no row for {sorted(missing)}"
    message_fields = set(Message.model_fields) | {"audio", "function_call", "content[].image_url"}
    assert message_fields <= documented


def test_every_field_the_openai_sdk_can_send_is_in_the_docs_table() -> None:
    from openai.types import completion_create_params as completions
    from openai.types.chat import completion_create_params as chats

    documented = {name.split(".")[0] for name in _documented_fields()}
    sdk = set(chats.CompletionCreateParamsBase.__annotations__) | set(
        completions.CompletionCreateParamsBase.__annotations__
    )
    missing = sdk - documented
    assert not missing, f"the openai SDK can send {sorted(missing)}; docs/openai-api.md does not say what happens"
