"""Tool calls parsed out of text per model family, on text alone: whole answers, growing ones, and what is not a
call."""

from __future__ import annotations

import json

import pytest

from runtime.output.toolcalls import FORMATS, Hermes, Llama3Json, call_id, format_for_template
from runtime.weights.demo_model import CHAT_TEMPLATE

pytestmark = pytest.mark.unit

HERMES = Hermes()
LLAMA = Llama3Json()
WEATHER = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "time", "arguments": {}}\n</tool_call>'


def test_hermes_blocks_become_calls_and_the_rest_content() -> None:
    split = HERMES.split(f"Let me look.\n{WEATHER}\n{TIME}\n", "req", final=True)
    assert split.content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in split.calls] == [
        ("weather", {"city": "Oslo"}),
        ("time", {}),
    ]
    assert [c.id for c in split.calls] == [call_id("req", 0), call_id("req", 1)]
    assert len({c.id for c in split.calls}) == 2 and call_id("req", 0) != call_id("other", 0)


def test_text_without_markup_is_all_content() -> None:
    assert HERMES.split("Just words.", "r", final=True).calls == ()
    assert HERMES.split("Just words.", "r", final=True).content == "Just words."
    assert LLAMA.split("Just words.", "r", final=True).content == "Just words."


def test_a_block_that_is_not_a_call_stays_content() -> None:
    broken = "<tool_call>\nnot json\n</tool_call>"
    split = HERMES.split(f"a {broken}", "r", final=True)
    assert split.calls == () and split.content == f"a {broken}"
    nameless = '<tool_call>{"arguments": {}}</tool_call>'
    assert HERMES.split(nameless, "r", final=True).content == nameless


def test_an_unclosed_last_block_is_a_call_if_its_json_is_whole() -> None:
    (call,) = HERMES.split('<tool_call>\n{"name": "time", "arguments": {}}', "r", final=True).calls
    assert call.function.name == "time"
    cut = '<tool_call>\n{"name": "time", "argu'
    assert HERMES.split(cut, "r", final=True) == HERMES.split(cut, "r", final=True)
    assert HERMES.split(cut, "r", final=True).content == cut


def test_a_growing_text_never_shows_markup_and_never_takes_content_back() -> None:
    text = f"Sure.\n{WEATHER}\n{TIME}"
    shown, calls = "", 0
    for end in range(len(text) + 1):
        split = HERMES.split(text[:end], "r", final=False)
        assert split.content.startswith(shown), (text[:end], split.content, shown)
        assert "<" not in split.content and len(split.calls) >= calls
        shown, calls = split.content, len(split.calls)
    final = HERMES.split(text, "r", final=True)
    assert final.content.startswith(shown) and final.calls == HERMES.split(text, "r", final=False).calls
    assert calls == 2


def test_a_growing_text_shows_a_failed_block_once_it_closes() -> None:
    assert HERMES.split("x <tool_call>oops", "r", final=False).content == "x"
    assert HERMES.split("x <tool_call>oops</tool_call>", "r", final=False).content == "x <tool_call>oops</tool_call>"
    assert HERMES.split("a <tool_c", "r", final=False).content == "a"
    assert HERMES.split("a <b", "r", final=False).content == "a <b"


def test_llama3_json_answers_are_calls() -> None:
    split = LLAMA.split(
        '{"name": "weather", "parameters": {"city": "Oslo"}}; {"name": "time", "parameters": {}}', "r", final=True
    )
    assert [c.function.name for c in split.calls] == ["weather", "time"]
    assert json.loads(split.calls[0].function.arguments) == {"city": "Oslo"} and split.content == ""
    assert LLAMA.split('{"name": "weather", "parameters": {', "r", final=False).content == ""
    assert LLAMA.split('{"name": "weather"}', "r", final=True).calls == (), "no parameters: not a call"
    assert LLAMA.split("{not json", "r", final=True).content == "{not json"


def test_the_format_comes_from_the_flag_or_the_template() -> None:
    assert format_for_template("auto", CHAT_TEMPLATE) is FORMATS["hermes"]
    assert format_for_template("auto", "{{ '<|python_tag|>' }}") is FORMATS["llama3_json"]
    assert format_for_template("auto", "{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert format_for_template("auto", None) is None
    assert format_for_template("llama3_json", CHAT_TEMPLATE) is FORMATS["llama3_json"]
    assert format_for_template("none", CHAT_TEMPLATE) is None
