"""Chat messages into prompt text: through the model's chat template, or a plain fallback for a model without one.

Messages reach the template in the shape Hugging Face templates expect: ``name`` when given; an assistant turn's
``tool_calls`` as ``{"id", "type": "function", "function": {"name", "arguments"}}``, with ``arguments`` as an
object when it is the JSON text of one (templates write it with ``tojson``); a ``tool`` turn's ``tool_call_id``;
null content as ``""``. A template that ignores tool calls would drop them without a word, and the model would
answer a conversation the client did not send: so when a message has ``tool_calls``, the messages are rendered a
second time without them, and if the two texts are the same the request is refused (``PromptRejected``).

Tools a request declares go to the template as ``tools=`` (``[{"type": "function", "function": {"name",
"description", "parameters"}}]``, as transformers' ``apply_chat_template`` takes them); a template that ignores
them is caught the same way, as the model would never hear of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from runtime.errors import PromptRejected
from wire import ChatMessage, Tool, ToolCall

__all__ = ["chat_prompt", "template_messages"]


def chat_prompt(tokenizer: Any, messages: Sequence[ChatMessage], tools: Sequence[Tool] = ()) -> tuple[str, bool]:
    """The prompt text, and whether tokenizing it must add the special tokens (a template writes them itself)."""
    if not tokenizer.chat_template:
        if tools:
            raise PromptRejected("this model has no chat template to declare tools with")
        return _plain(messages), True
    declared = [tool.model_dump(exclude_none=True) for tool in tools] or None
    text = _render(tokenizer, template_messages(messages), declared)
    if declared and _render(tokenizer, template_messages(messages), None) == text:
        raise PromptRejected("this model's chat template does not render tools, so it cannot be told about them")
    if any(m.tool_calls for m in messages):
        without = _render(tokenizer, template_messages(messages, tool_calls=False), declared)
        if without == text:
            first = next(i for i, m in enumerate(messages) if m.tool_calls)
            raise PromptRejected(
                f"this model's chat template does not render tool calls (messages[{first}].tool_calls), so it "
                "cannot continue a conversation that contains them"
            )
    return text, False


def template_messages(messages: Sequence[ChatMessage], *, tool_calls: bool = True) -> list[dict[str, Any]]:
    """The messages as a chat template reads them (``tool_calls=False``: without any tool calls)."""
    rendered = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls and tool_calls:
            entry["tool_calls"] = [_tool_call(call) for call in message.tool_calls]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        rendered.append(entry)
    return rendered


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    rendered = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    return str(rendered)


def _tool_call(call: ToolCall) -> dict[str, Any]:
    function = {"name": call.function.name, "arguments": _arguments(call.function.arguments)}
    return {"id": call.id, "type": call.type, "function": function}


def _arguments(text: str) -> Any:
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def _plain(messages: Sequence[ChatMessage]) -> str:
    """``role: content`` lines, for a model without a chat template; tool calls have no place in them."""
    for index, message in enumerate(messages):
        if message.tool_calls:
            raise PromptRejected(
                f"this model has no chat template to render tool calls (messages[{index}].tool_calls) with"
            )
    return "\n".join(f"{m.role}: {m.content or ''}" for m in messages) + "\nassistant:"
