"""Bounded input at the door: a body nested too deeply, a schema too deep or too large, a stop sequence too long, a
token id no integer can hold, or text that is no Unicode is one 400 naming its field; each is a bound's edge, and
what lies within it is accepted."""

from __future__ import annotations

import json
from typing import Any

import pytest

import wire
from gateway.api.bodies import error_body
from gateway.api.bounds import MAX_JSON_DEPTH, decode_body, depth_exceeds
from gateway.api.choices import fan_out
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest, parse_request
from gateway.api.tools import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH
from gateway.errors import InvalidRequest
from gateway.queue.stream import QueuedRequest

pytestmark = [pytest.mark.unit, pytest.mark.security]

Schema = type[CompletionRequest] | type[ChatCompletionRequest]


def nested(levels: int) -> Any:
    """A JSON value ``levels`` deep: arrays in arrays."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def schema_of_depth(levels: int) -> dict[str, Any]:
    """An object schema ``levels`` deep (the schema object is level 1)."""
    schema: dict[str, Any] = {"type": "object"} if levels % 2 else {"type": "object", "required": []}
    for _ in range((levels - 1) // 2):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def answer(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}


def admitted(schema: Schema, raw: str | bytes) -> CompletionRequest | ChatCompletionRequest:
    """What the door does with a body, up to the queue: decode, validate, make the wire requests, store them."""
    parsed = parse_request(schema, decode_body(raw.encode() if isinstance(raw, str) else raw))
    for request in fan_out(parsed, "chatcmpl-x", 16):
        QueuedRequest.model_validate_json(
            QueuedRequest(request=request, reply_to="c", accepted_at=0.0).model_dump_json().encode()
        )
    return parsed


def refused(schema: Schema, raw: str | bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        admitted(schema, raw)
    error = info.value
    assert error.status_code == 400
    json.dumps(error_body(error.message, error.error_type, error.param, error.code), ensure_ascii=False).encode()
    return error


def test_depth_is_measured_without_recursion() -> None:
    assert [depth_exceeds(schema_of_depth(n), n - 1) for n in (1, 2, 5, 48)] == [True] * 4
    assert [depth_exceeds(schema_of_depth(n), n) for n in (1, 2, 5, 48)] == [False] * 4
    assert not depth_exceeds(nested(3), 3) and depth_exceeds(nested(4), 3)
    assert not depth_exceeds({"a": [1, {"b": "c"}]}, 3) and depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not depth_exceeds("text", 1)
    assert depth_exceeds(nested(100_000), MAX_JSON_DEPTH)  # far past any recursion limit


C, CC = CompletionRequest, ChatCompletionRequest
DEEP_METADATA = json.dumps(chat())[:-1] + ', "metadata": ' + "[" * 1100 + "]" * 1100 + "}"
BIG_INT = '{"model": "m", "prompt": "a", "max_tokens": ' + "1" * 4400 + "}"
SURROGATE_PART = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}])


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "a"} | fields


@pytest.mark.parametrize(
    ("schema", "raw", "param", "words"),
    [
        # Past the JSON decoder's own limit (a RecursionError, before): the member that is too deep is named.
        pytest.param(CC, DEEP_METADATA, "metadata", f"deeper than {MAX_JSON_DEPTH} levels", id="decoder-depth"),
        pytest.param(CC, "[" * 5000 + "]" * 5000, None, "deeper than", id="decoder-depth-no-object"),
        # Within the decoder's limit but past the body's.
        pytest.param(CC, json.dumps(chat(prediction={"a": nested(MAX_JSON_DEPTH - 1)})), "prediction", "deeper than",
                     id="body-depth"),
        # Past each schema's own bound: named by the schema's path.
        pytest.param(CC, json.dumps(chat(tools=[tool(schema_of_depth(201))])), "tools[0].function.parameters",
                     f"deeper than {MAX_SCHEMA_DEPTH} levels", id="tool-schema-201-levels"),
        pytest.param(CC, json.dumps(chat(tools=[tool({}), tool(schema_of_depth(MAX_SCHEMA_DEPTH + 1))])),
                     "tools[1].function.parameters", "deeper than", id="tool-schema-depth"),
        pytest.param(CC, json.dumps(chat(response_format=answer(schema_of_depth(MAX_SCHEMA_DEPTH + 1)))),
                     "response_format.json_schema.schema", "deeper than", id="response-schema-depth"),
        pytest.param(CC, json.dumps(chat(tools=[tool({"description": "x" * MAX_SCHEMA_BYTES})])),
                     "tools[0].function.parameters", f"larger than {MAX_SCHEMA_BYTES} bytes", id="tool-schema-bytes"),
        pytest.param(CC, json.dumps(chat(response_format=answer({"enum": ["é" * (MAX_SCHEMA_BYTES // 2)]}))),
                     "response_format.json_schema.schema", "larger than", id="response-schema-utf8-bytes"),
        # Stop sequences: each bounded, so the runtime's look for their prefixes on every step is.
        pytest.param(C, json.dumps(completion(stop="x" * (wire.MAX_STOP_LENGTH + 1))), "stop",
                     f"at most {wire.MAX_STOP_LENGTH} characters", id="stop-length"),
        pytest.param(CC, json.dumps(chat(stop=["ok", "x" * 250_000])), "stop", "at most", id="stop-250k"),
        # A token id with more digits than Python converts to an integer (a ValueError, before).
        pytest.param(C, json.dumps(completion(logit_bias={"1" * 4400: 1})), "logit_bias", "keys must be token ids",
                     id="logit-bias-4400-digits"),
        pytest.param(C, json.dumps(completion(logit_bias={"1" * 11: 1})), "logit_bias", "at most 10 digits",
                     id="logit-bias-11-digits"),
        pytest.param(C, json.dumps(completion(logit_bias={"٣": 1})), "logit_bias", "keys must be token ids",
                     id="logit-bias-arabic-digit"),
        # A lone surrogate: valid JSON, but no Unicode (a UnicodeEncodeError when stored, before).
        pytest.param(CC, json.dumps(chat(messages=[{"role": "user", "content": "a\ud800b"}])), "messages[0].content",
                     "valid Unicode, not a lone surrogate (U+D800)", id="surrogate-content"),
        pytest.param(CC, json.dumps(SURROGATE_PART), "messages[0].content[0].text", "lone surrogate",
                     id="surrogate-content-part"),
        pytest.param(C, json.dumps(completion(prompt=["fine", "\udc00"])), "prompt[1]", "lone surrogate",
                     id="surrogate-prompt"),
        pytest.param(C, json.dumps(completion(stop=["\ud800"])), "stop[0]", "lone surrogate", id="surrogate-stop"),
        pytest.param(CC, json.dumps(chat(metadata={"\ud800": "x"})), "metadata", "a key must be valid Unicode",
                     id="surrogate-key"),
        pytest.param(C, json.dumps({"\ud800": 1}), None, "a key must be valid Unicode", id="surrogate-top-key"),
        pytest.param(C, json.dumps(completion(prompt="\ud800")).encode("utf-16"), "prompt", "lone surrogate",
                     id="surrogate-utf16-body"),
        # Not JSON at all, as before: an integer literal of more digits than Python converts.
        pytest.param(C, BIG_INT, None, "not valid JSON", id="int-literal-4400-digits"),
    ],
)  # fmt: skip
def test_input_out_of_bounds_is_a_400_naming_its_field(
    schema: Schema, raw: str | bytes, param: str | None, words: str
) -> None:
    error = refused(schema, raw)
    assert error.param == param
    assert words in error.message
    assert len(error.message) < 200  # never the offending value itself (and no surrogate: it was encoded above)


@pytest.mark.parametrize(
    ("schema", "raw"),
    [
        pytest.param(CC, json.dumps(chat(prediction={"a": nested(MAX_JSON_DEPTH - 2)})), id="body-depth"),
        pytest.param(CC, json.dumps(chat(tools=[tool(schema_of_depth(MAX_SCHEMA_DEPTH))])), id="tool-schema-depth"),
        pytest.param(CC, json.dumps(chat(response_format=answer(schema_of_depth(MAX_SCHEMA_DEPTH)))),
                     id="response-schema-depth"),
        pytest.param(CC, json.dumps(chat(tools=[tool({"description": "x" * (MAX_SCHEMA_BYTES - 20)})])),
                     id="tool-schema-bytes"),
        pytest.param(C, json.dumps(completion(stop=["x" * wire.MAX_STOP_LENGTH] * 4)), id="stop-length"),
        pytest.param(C, json.dumps(completion(logit_bias={"4294967295": -100})), id="logit-bias-10-digits"),
        pytest.param(CC, json.dumps(chat(messages=[{"role": "user", "content": "\U0001f600 ok"}])),
                     id="escaped-surrogate-pair"),
        pytest.param(CC, json.dumps(chat(messages=[{"role": "user", "content": "\U0001f600"}]),
                     ensure_ascii=False).encode("utf-16"), id="utf16-body"),
    ],
)  # fmt: skip
def test_input_within_bounds_is_admitted(schema: Schema, raw: str | bytes) -> None:
    admitted(schema, raw)


def test_schema_depths_fit_in_the_body_depth() -> None:
    """A schema within its own bound never trips the body's: its too-deep error always names the schema."""
    tool_schema_at = 5  # body, tools, a tool, its function, parameters
    assert tool_schema_at - 1 + MAX_SCHEMA_DEPTH <= MAX_JSON_DEPTH
