"""Tool calls in generated text, per model family: where they are, what they say, and the grammar that forces them.

Models write tool calls in their family's markup, which their chat template teaches them:

- ``hermes`` (Hermes, Qwen 2/2.5/3, and the demo model): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n
  </tool_call>``, one block per call, text may come before them;
- ``llama3_json`` (Llama 3.1+ with JSON tool calling): the whole answer is ``{"name": ..., "parameters": {...}}``,
  several joined by ``; ``.

A ``ToolFormat`` splits a text into what the client sees as content and the calls (``split``), also while the
text is still growing, so a stream never shows markup and never takes content back: a call's markup is held until
it is complete, then it becomes a call (or, if it is not one, content). ``grammar`` gives the Lark grammar
(llguidance's dialect, JSON Schemas embedded with ``%json``) whose sentences are exactly well-formed calls of the
given tools, for ``tool_choice`` ``required`` or a named tool. Which format a model uses is the runtime's
``--tool-parser`` flag; ``auto`` guesses from the chat template (``format_for_template``). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from wire import FunctionCall, Tool, ToolCall

__all__ = [
    "FORMATS",
    "Hermes",
    "Llama3Json",
    "Split",
    "ToolFormat",
    "ToolParserName",
    "call_id",
    "compact_json",
    "format_for_template",
]

ToolParserName = Literal["auto", "hermes", "llama3_json", "none"]

#: How llguidance writes JSON it constrains: one line, the separators of ``json.dumps``. Without it every gap
#: may hold any whitespace, which a weak model fills at length.
_COMPACT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


@dataclass(frozen=True)
class Split:
    """A text seen as the client sees it: ``content`` (what is outside the calls' markup; while the text grows,
    only what can never turn out to be markup) and the ``calls`` complete so far."""

    content: str
    calls: tuple[ToolCall, ...] = ()


class ToolFormat(Protocol):
    name: str

    def split(self, text: str, request_id: str, *, final: bool) -> Split:
        """``text`` so far (``final``: all of it). A call's id is ``call_id(request_id, index)``."""
        ...

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> str:
        """Lark rules whose rule ``calls`` is one call (``parallel``: one or more) of any of ``tools``."""
        ...


def call_id(request_id: str, index: int) -> str:
    """The id of a request's ``index``-th call: the same whenever the request is generated again (a redelivery)."""
    digest = hashlib.blake2b(f"{request_id}:{index}".encode(), digest_size=12).hexdigest()
    return f"call_{digest}"


def compact_json(schema: dict[str, Any]) -> str:
    """``schema`` for a ``%json`` rule, written compactly (unless the schema says otherwise itself)."""
    return json.dumps({"x-guidance": _COMPACT, **schema}, separators=(",", ":"))


def _call(request_id: str, index: int, name: str, arguments: Any) -> ToolCall:
    text = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=call_id(request_id, index), function=FunctionCall(name=name, arguments=text))


def _parameters(tool: Tool) -> dict[str, Any]:
    """The arguments' schema; a function declared without one takes no arguments (as OpenAI reads it)."""
    return tool.function.parameters or {"type": "object", "properties": {}, "additionalProperties": False}


def _call_schema(tools: Sequence[Tool], arguments_key: str) -> dict[str, Any]:
    """A JSON Schema for ``{"name": <one of the tools>, <arguments_key>: <its arguments>}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.function.name}, arguments_key: _parameters(tool)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _lark_string(text: str) -> str:
    return json.dumps(text)


class Hermes:
    """``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`` blocks."""

    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def split(self, text: str, request_id: str, *, final: bool) -> Split:
        content: list[str] = []
        calls: list[ToolCall] = []
        at = 0
        for block in self._BLOCK.finditer(text):
            content.append(text[at : block.start()])
            self._take(block.group(0), block.group(1), request_id, calls, content)
            at = block.end()
        rest = text[at:]
        opened = rest.find(self.OPEN)
        if opened >= 0:
            content.append(rest[:opened])
            if final:  # an unclosed last block: a call if its JSON is whole (the model stopped before the tag)
                self._take(rest[opened:], rest[opened + len(self.OPEN) :], request_id, calls, content)
        else:
            content.append(rest if final else rest[: _partial_tag_start(rest, self.OPEN)])
        # Whitespace between and after calls is layout, not content: held while the text grows, dropped at the end.
        return Split("".join(content).rstrip(), tuple(calls))

    def _take(self, block: str, body: str, request_id: str, calls: list[ToolCall], content: list[str]) -> None:
        parsed = _json_object(body.strip())
        if parsed is not None and isinstance(parsed.get("name"), str):
            calls.append(_call(request_id, len(calls), parsed["name"], parsed.get("arguments", {})))
        else:
            content.append(block)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> str:
        call = f"call: {_lark_string(self.OPEN + chr(10))} body {_lark_string(chr(10) + self.CLOSE)}"
        start = 'calls: call ("\\n" call)*' if parallel else "calls: call"
        return f"{start}\n{call}\nbody: %json {compact_json(_call_schema(tools, 'arguments'))}\n"


class Llama3Json:
    """The whole answer is ``{"name": "f", "parameters": {...}}`` (``arguments`` is taken too), several joined by
    ``;``. An answer that does not start with ``{`` is content."""

    name = "llama3_json"

    def split(self, text: str, request_id: str, *, final: bool) -> Split:
        start = text.lstrip()
        if not start.startswith("{"):
            return Split(text if final else text.rstrip())
        if not final:
            return Split("")
        calls = self._calls(start, request_id)
        return Split("", calls) if calls else Split(text)

    def _calls(self, text: str, request_id: str) -> tuple[ToolCall, ...]:
        decoder = json.JSONDecoder()
        calls: list[ToolCall] = []
        at = 0
        while at < len(text):
            try:
                parsed, at = decoder.raw_decode(text, at)
            except ValueError:
                return ()
            arguments = parsed.get("parameters", parsed.get("arguments")) if isinstance(parsed, dict) else None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str) or arguments is None:
                return ()
            calls.append(_call(request_id, len(calls), parsed["name"], arguments))
            at = len(text) - len(text[at:].lstrip().removeprefix(";").lstrip())
        return tuple(calls)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> str:
        start = 'calls: call ("; " call)*' if parallel else "calls: call"
        return f"{start}\ncall: %json {compact_json(_call_schema(tools, 'parameters'))}\n"


FORMATS: dict[str, ToolFormat] = {"hermes": Hermes(), "llama3_json": Llama3Json()}


def format_for_template(setting: ToolParserName, template: str | None) -> ToolFormat | None:
    """The format ``--tool-parser`` names; for ``auto``, the one the chat template writes (None: no tool calls)."""
    if setting == "none":
        return None
    if setting != "auto":
        return FORMATS[setting]
    if not template:
        return None
    if Hermes.OPEN in template:
        return FORMATS["hermes"]
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return FORMATS["llama3_json"]
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _partial_tag_start(text: str, tag: str) -> int:
    """Where a suffix of ``text`` that could be the start of ``tag`` begins (``len(text)`` if none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return len(text) - size
    return len(text)
