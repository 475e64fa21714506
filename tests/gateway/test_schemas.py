from __future__ import annotations

from typing import Any

import pytest

import wire
from gateway.errors import InvalidRequest
from gateway.schemas import ChatCompletionRequest, CompletionRequest, ResponseShape, parse_request

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi"}, "model"),
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": 3}, "prompt"),
        ({"model": "m", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "prompt": "hi", "temperature": 3}, "temperature"),
        ({"model": "m", "prompt": "hi", "n": 2}, "n"),
        ({"model": "m", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ],
)
def test_completion_errors_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(CompletionRequest, body)
    assert info.value.param is not None and info.value.param.startswith(param)
    assert info.value.status_code == 400


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest):
        parse_request(CompletionRequest, ["model"])


def test_chat_to_wire_fills_a_seed_and_flattens_content_parts() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_completion_tokens": 7,
        "stop": "x",
        "unknown_option": True,
    }
    req = parse_request(ChatCompletionRequest, body).to_wire("id-1", default_max_tokens=99)
    assert req.messages == (wire.ChatMessage(role="user", content="ab"),)
    assert req.params.max_tokens == 7
    assert req.params.stop == ("x",)
    assert req.params.seed is not None


def test_response_shapes() -> None:
    usage = wire.Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)
    finish = wire.FinishEvent(id="x", text="hello", finish_reason="length", usage=usage)
    chat = ResponseShape("chat", "chatcmpl-1", "m")
    final = chat.final(finish)
    assert final["object"] == "chat.completion"
    assert final["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert final["usage"]["total_tokens"] == 5
    assert chat.chunk("he", first=True)["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert chat.chunk("", finish_reason="stop")["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    text = ResponseShape("completion", "cmpl-1", "m")
    assert text.chunk("he")["choices"][0]["text"] == "he"
    assert text.usage_chunk(usage)["choices"] == []
