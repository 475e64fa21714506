"""Response bodies: choices by index, and log-probabilities in each API's shape."""

from __future__ import annotations

import pytest

import wire
from gateway.api.bodies import ResponseShape

pytestmark = pytest.mark.unit

USAGE = wire.Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)


def entry(token: str, logprob: float | None, *alternatives: tuple[str, float]) -> wire.TokenLogprob:
    top = tuple(wire.TopLogprob(token=t, bytes=tuple(t.encode()), logprob=lp) for t, lp in alternatives)
    return wire.TokenLogprob(token=token, bytes=tuple(token.encode()), logprob=logprob, top_logprobs=top)


def finish(text: str, logprobs: tuple[wire.TokenLogprob, ...] | None = None) -> wire.FinishEvent:
    return wire.FinishEvent(id="x", text=text, finish_reason="length", usage=USAGE, logprobs=logprobs)


def test_response_shapes() -> None:
    chat = ResponseShape(kind="chat", request_id="chatcmpl-1", model="m", logprobs=False)
    final = chat.final([finish("hello"), finish("bye")], USAGE)
    assert final["object"] == "chat.completion"
    assert [c["index"] for c in final["choices"]] == [0, 1]
    assert final["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert final["choices"][1]["logprobs"] is None
    assert final["usage"]["total_tokens"] == 5
    assert chat.chunk(1, "he", first=True)["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert chat.chunk(0, "", finish_reason="stop")["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    text = ResponseShape(kind="completion", request_id="cmpl-1", model="m", logprobs=False)
    assert text.chunk(2, "he")["choices"][0] == {"index": 2, "text": "he", "logprobs": None, "finish_reason": None}
    assert text.usage_chunk(USAGE)["choices"] == []


def test_chat_logprobs_shape() -> None:
    chat = ResponseShape(kind="chat", request_id="chatcmpl-1", model="m", logprobs=True)
    entries = (entry("Hi", -0.5, ("Hi", -0.5), ("Yo", -1.5)), entry("!", -0.1))
    logprobs = chat.final([finish("Hi!", entries)], USAGE)["choices"][0]["logprobs"]
    assert logprobs == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                    {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
                ],
            },
            {"token": "!", "logprob": -0.1, "bytes": [33], "top_logprobs": []},
        ],
        "refusal": None,
    }
    assert chat.chunk(0, "Hi", entries[:1])["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    assert chat.chunk(0, "", finish_reason="length")["choices"][0]["logprobs"] is None


def test_completion_logprobs_shape_with_an_echoed_prompt() -> None:
    text = ResponseShape(kind="completion", request_id="cmpl-1", model="m", logprobs=True)
    entries = (entry("Say", None), entry(" é", -2.0, (" a", -1.0)), entry("!", -0.25, ("!", -0.25)))
    logprobs = text.final([finish("Say é!", entries)], USAGE)["choices"][0]["logprobs"]
    assert logprobs == {
        "tokens": ["Say", " é", "!"],
        "token_logprobs": [None, -2.0, -0.25],
        "top_logprobs": [None, {" a": -1.0, " é": -2.0}, {"!": -0.25}],
        "text_offset": [0, 3, 5],
    }


def test_streamed_text_offsets_continue_per_choice() -> None:
    text = ResponseShape(kind="completion", request_id="cmpl-1", model="m", logprobs=True)
    first = text.chunk(0, "ab", (entry("ab", -1.0),))
    other = text.chunk(1, "x", (entry("x", -1.0),))
    second = text.chunk(0, "c", (entry("c", -1.0),))
    assert first["choices"][0]["logprobs"]["text_offset"] == [0]
    assert other["choices"][0]["logprobs"]["text_offset"] == [0]
    assert second["choices"][0]["logprobs"]["text_offset"] == [2]


def call(name: str, arguments: str, n: int) -> wire.ToolCall:
    return wire.ToolCall(id=f"call_{n}", function=wire.FunctionCall(name=name, arguments=arguments))


def test_tool_calls_in_messages_and_chunks() -> None:
    chat = ResponseShape(kind="chat", request_id="chatcmpl-1", model="m", logprobs=False)
    calls = (call("weather", '{"city": "Oslo"}', 1), call("clock", "{}", 2))
    done = wire.FinishEvent(id="x", text="", finish_reason="tool_calls", usage=USAGE, tool_calls=calls)
    (choice,) = chat.final([done], USAGE)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
        ],
    }
    with_text = done.model_copy(update={"text": "Checking."})
    assert chat.final([with_text], USAGE)["choices"][0]["message"]["content"] == "Checking."

    first = chat.chunk(0, "", first=True, tool_calls=calls[:1])["choices"][0]["delta"]
    assert first == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"index": 0, **calls[0].model_dump()}],
    }
    later = chat.chunk(0, "", tool_calls=calls[1:])["choices"][0]["delta"]
    assert later["tool_calls"] == [{"index": 1, **calls[1].model_dump()}], "indexed among the choice's calls"
    assert chat.chunk(1, "", tool_calls=calls[1:])["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
