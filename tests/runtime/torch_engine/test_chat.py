"""Chat messages into a prompt: tool turns and declared tools reach the template, and a template that would drop
them is refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import PromptRejected
from runtime.torch_engine.chat import chat_prompt, template_messages
from wire import ChatMessage, FunctionCall, FunctionDefinition, Tool, ToolCall

pytestmark = pytest.mark.unit

#: The demo model's template before it learnt tools: every message's content, nothing else.
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: The plain template plus what tool-aware templates (Llama 3.1, Qwen 2.5) do with tool calls.
TOOL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message.get('tool_calls', []) %}[{{ call.function.name }}({{ call.function.arguments | tojson }})]"
    "{% endfor %}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CALL = ToolCall(id="call_1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
CONVERSATION = (
    ChatMessage(role="user", content="Weather in Oslo?"),
    ChatMessage(role="assistant", content=None, tool_calls=(CALL,)),
    ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
)


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_tool_turns_reach_the_template_as_hugging_face_expects() -> None:
    assert template_messages(CONVERSATION) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    not_json = ToolCall(id="c", function=FunctionCall(name="f", arguments="[1, 2"))
    (message,) = template_messages([ChatMessage(role="assistant", content="x", tool_calls=(not_json,), name="bot")])
    assert message["tool_calls"][0]["function"]["arguments"] == "[1, 2"
    assert message["name"] == "bot"


def with_template(tokenizer: Any, template: str | None) -> Any:
    changed = copy.copy(tokenizer)
    changed.chat_template = template
    return changed


def test_a_template_that_drops_tool_calls_is_refused(tokenizer: Any) -> None:
    plain = with_template(tokenizer, PLAIN_TEMPLATE)
    with pytest.raises(PromptRejected, match=r"does not render tool calls \(messages\[1\]\.tool_calls\)"):
        chat_prompt(plain, CONVERSATION)
    text, special = chat_prompt(plain, (CONVERSATION[0], CONVERSATION[2]))  # a tool result alone is text
    assert "<|tool|>\nsunny" in text and not special


def test_a_template_that_renders_tool_calls_gets_them(tokenizer: Any) -> None:
    text, _ = chat_prompt(with_template(tokenizer, TOOL_TEMPLATE), CONVERSATION)
    assert '[weather({"city": "Oslo"})]' in text
    assert text.endswith("<|tool|>\nsunny<|eos|>\n<|assistant|>\n")


def test_the_demo_template_writes_tools_calls_and_results_as_hermes_does(tokenizer: Any) -> None:
    weather = Tool(function=FunctionDefinition(name="weather", parameters={"type": "object"}))
    text, _ = chat_prompt(tokenizer, CONVERSATION, (weather,))
    assert '<tools>\n{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}\n' in text
    assert '<|assistant|>\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert text.endswith("<|tool|>\n<tool_response>\nsunny\n</tool_response><|eos|>\n<|assistant|>\n")
    without_tools, _ = chat_prompt(tokenizer, CONVERSATION[:1])
    assert without_tools == "<|bos|><|user|>\nWeather in Oslo?<|eos|>\n<|assistant|>\n", "as before tools existed"


def test_a_template_that_ignores_tools_is_refused(tokenizer: Any) -> None:
    weather = Tool(function=FunctionDefinition(name="weather"))
    with pytest.raises(PromptRejected, match="does not render tools"):
        chat_prompt(with_template(tokenizer, PLAIN_TEMPLATE), CONVERSATION[:1], (weather,))
    with pytest.raises(PromptRejected, match="no chat template to declare tools"):
        chat_prompt(with_template(tokenizer, None), CONVERSATION[:1], (weather,))


def test_without_a_template_tool_calls_are_refused(tokenizer: Any) -> None:
    plain = with_template(tokenizer, None)
    assert chat_prompt(plain, CONVERSATION[:1]) == ("user: Weather in Oslo?\nassistant:", True)
    with pytest.raises(PromptRejected, match="no chat template"):
        chat_prompt(plain, CONVERSATION)
