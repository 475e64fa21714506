"""Constrained decoding with the demo model's real tokenizer: whatever the logits say, a forced tool call or a
structured answer is valid JSON for its schema, and rows without a grammar are untouched."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import wire
from runtime.errors import PromptRejected
from runtime.output.toolcalls import FORMATS
from runtime.torch_engine.grammar import GrammarMask, Grammars, grammar_text
from runtime.torch_engine.sampling import RowSampler, choose

pytestmark = pytest.mark.unit

HELLO = (wire.ChatMessage(role="user", content="Hello"),)


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as OpenAI's strict schemas have

    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(max_length=16)
    tags: list[Annotated[str, Field(max_length=8)]] = Field(max_length=3)
    score: float


def _tool(name: str, parameters: dict[str, Any] | None) -> wire.Tool:
    return wire.Tool(function=wire.FunctionDefinition(name=name, parameters=parameters))


TOOLS = (_tool("weather", Weather.model_json_schema()), _tool("clock", None))


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


@pytest.fixture(scope="module")
def grammars(tokenizer: Any) -> Grammars:
    return Grammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def _generate(mask: GrammarMask, tokenizer: Any, seed: int, limit: int = 300) -> str:
    """Random logits through the mask, a greedy choice each step, until the end-of-sequence token."""
    generator = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(limit):
        logits = torch.randn(len(tokenizer), generator=generator) * 5
        token = int(mask(logits).argmax())
        if token == tokenizer.eos_token_id:
            return str(tokenizer.decode(ids))
        mask.accept(token)
        ids.append(token)
    raise AssertionError(f"no end after {limit} tokens: {tokenizer.decode(ids)!r}")


def _request(**fields: Any) -> wire.GenerationRequest:
    return wire.GenerationRequest(id="r", messages=HELLO, **fields)


@pytest.mark.parametrize("seed", range(8))
def test_a_named_tool_choice_always_gives_a_valid_call(grammars: Grammars, tokenizer: Any, seed: int) -> None:
    request = _request(tools=TOOLS, tool_choice=wire.ForcedTool(name="weather"), parallel_tool_calls=False)
    grammar = grammar_text(request, FORMATS["hermes"])
    assert grammar is not None
    text = _generate(grammars.mask(grammar), tokenizer, seed)
    (call,) = FORMATS["hermes"].split(text, "r", final=True).calls
    assert call.function.name == "weather"
    Weather.model_validate_json(call.function.arguments)


@pytest.mark.parametrize("seed", range(8))
def test_required_calls_one_or_more_of_the_tools(grammars: Grammars, tokenizer: Any, seed: int) -> None:
    grammar = grammar_text(_request(tools=TOOLS, tool_choice="required"), FORMATS["llama3_json"])
    assert grammar is not None
    text = _generate(grammars.mask(grammar), tokenizer, seed, limit=2000)
    calls = FORMATS["llama3_json"].split(text, "r", final=True).calls
    assert calls, text
    for call in calls:
        if call.function.name == "weather":
            Weather.model_validate_json(call.function.arguments)
        else:
            assert call.function.name == "clock" and isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("seed", range(8))
def test_a_json_schema_answer_is_valid(grammars: Grammars, tokenizer: Any, seed: int) -> None:
    schema = wire.ResponseFormat(type="json_schema", json_schema=Answer.model_json_schema())
    grammar = grammar_text(_request(response_format=schema), None)
    assert grammar is not None
    Answer.model_validate_json(_generate(grammars.mask(grammar), tokenizer, seed))


def test_json_object_gives_an_object_and_auto_with_a_format_gives_either(grammars: Grammars, tokenizer: Any) -> None:
    grammar = grammar_text(_request(response_format=wire.ResponseFormat(type="json_object")), None)
    assert grammar is not None
    assert isinstance(json.loads(_generate(grammars.mask(grammar), tokenizer, 0, limit=3000)), dict)
    either = grammar_text(
        _request(tools=TOOLS, response_format=wire.ResponseFormat(type="json_object")), FORMATS["hermes"]
    )
    assert either is not None and either.startswith("start: calls | answer\n")


def test_free_requests_have_no_grammar_and_forced_calls_need_a_format() -> None:
    assert grammar_text(_request(), FORMATS["hermes"]) is None
    assert grammar_text(_request(tools=TOOLS), FORMATS["hermes"]) is None, "auto: the model decides"
    assert grammar_text(_request(tools=TOOLS, tool_choice="none"), FORMATS["hermes"]) is None
    with pytest.raises(PromptRejected, match="no tool-call format"):
        grammar_text(_request(tools=TOOLS, tool_choice="required"), None)


def test_a_schema_llguidance_cannot_enforce_is_refused(grammars: Grammars) -> None:
    schema = wire.ResponseFormat(
        type="json_schema", json_schema={"type": "object", "properties": {"a": {"$ref": "#/x"}}}
    )
    grammar = grammar_text(_request(response_format=schema), None)
    assert grammar is not None
    with pytest.raises(PromptRejected, match="cannot be constrained"):
        grammars.mask(grammar)


def test_each_row_gets_its_own_state_of_a_cached_grammar(grammars: Grammars, tokenizer: Any) -> None:
    grammar = grammar_text(_request(response_format=wire.ResponseFormat(type="json_object")), None)
    assert grammar is not None
    first, second = grammars.mask(grammar), grammars.mask(grammar)
    brace = tokenizer("{", add_special_tokens=False)["input_ids"][0]
    first.accept(brace)
    assert not first.allowed()[brace], "after '{' comes a key or '}'"
    assert second.allowed()[brace] and not second.allowed()[tokenizer.eos_token_id]


def test_a_grammar_row_beside_plain_rows_leaves_them_as_they_were(grammars: Grammars, tokenizer: Any) -> None:
    grammar = grammar_text(_request(response_format=wire.ResponseFormat(type="json_object")), None)
    assert grammar is not None
    logits = torch.randn(3, len(tokenizer), generator=torch.Generator().manual_seed(1)) * 5

    def samplers(with_grammar: bool) -> list[RowSampler]:
        rows = [RowSampler(0.0, 1.0, random.Random(0)), RowSampler(0.8, 0.9, random.Random(1), logprobs=5)]
        constrained = RowSampler(0.8, 1.0, random.Random(2), logprobs=5)
        if with_grammar:
            constrained.grammar = grammars.mask(grammar)
        return [*rows, constrained]

    plain, mixed = choose(logits, samplers(False)), choose(logits, samplers(True))
    assert plain[:2] == mixed[:2]
    brace = tokenizer("{", add_special_tokens=False)["input_ids"][0]
    chosen = mixed[2]
    assert chosen.logprob is not None
    assert tokenizer.decode([chosen.token]).startswith("{") or chosen.token == brace
    assert all(logprob > float("-inf") for _, logprob in chosen.logprob.top), "masked tokens are no alternatives"
