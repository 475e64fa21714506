"""The torch engine's running batch, step by step: chunked prefill next to decoding rows, rows leaving while they
join, and a cache that is only ever as wide as its longest row."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.engine.interface import NextToken
from tests.runtime.support import TEXT, WORDS, greedy

pytestmark = pytest.mark.unit


def row(engine: Any, request_id: str, prompt: str) -> Any:
    prepared = engine.prepare(greedy(request_id, prompt=prompt, max_tokens=100))
    assert not hasattr(prepared, "code"), prepared
    return prepared


def by_row(tokens: list[NextToken[Any]]) -> dict[str, int]:
    return {t.row.completion.request.id: t.token for t in tokens}


def decode_alone(engine: Any, request_id: str, prompt: str, count: int) -> list[int]:
    """The first ``count`` tokens of the request in a batch of its own."""
    batch = engine.step_batch()
    batch.join([row(engine, request_id, prompt)])
    tokens: list[int] = []
    while len(tokens) < count:
        tokens += [t.token for t in batch.step()]
    return tokens


def test_a_long_prompt_joins_in_chunks_while_the_running_row_keeps_decoding(
    chunked_engine: Any, torch_engine: Any
) -> None:
    batch = chunked_engine.step_batch()
    batch.join([row(chunked_engine, "runs", "a queue")])
    runs = [by_row(batch.step())["runs"]]  # one chunk: the prompt is in, and its first token chosen
    joining = row(chunked_engine, "joins", TEXT)
    batch.join([joining])
    chunks = -(-len(joining.prompt_ids) // 4)
    for _ in range(chunks - 1):
        got = by_row(batch.step())
        assert batch.joining and set(got) == {"runs"}, "the running row is not held up by the joining prompt"
        runs.append(got["runs"])
    got = by_row(batch.step())
    assert not batch.joining and set(got) == {"runs", "joins"}
    runs.append(got["runs"])
    joins = [got["joins"]]
    for _ in range(20):
        got = by_row(batch.step())
        runs.append(got["runs"])
        joins.append(got["joins"])
    assert runs == decode_alone(torch_engine, "runs", "a queue", len(runs))
    assert joins == decode_alone(torch_engine, "joins", TEXT, len(joins)), "chunked, joined: as if alone"


def test_rows_can_leave_a_group_while_it_joins(chunked_engine: Any) -> None:
    batch = chunked_engine.step_batch()
    longest, other = row(chunked_engine, "longest", TEXT), row(chunked_engine, "other", " ".join(WORDS[:6]))
    batch.join([longest, other])
    batch.step()
    assert batch.cache_tokens == 2 * 4, "one chunk of 4 columns for each row"
    batch.leave([longest])
    assert batch.size == 1 and batch.joining
    assert batch.cache_tokens == 0, "those 4 columns were padding for the row that is left"
    tokens: list[int] = []
    while len(tokens) < 15:
        tokens += [t.token for t in batch.step()]
    assert tokens == decode_alone(chunked_engine, "other", " ".join(WORDS[:6]), 15)
    assert batch.cache_tokens == len(other.prompt_ids) + 14, "the longest prompt's padding was cut"


def test_the_cache_is_as_wide_as_its_longest_row(torch_engine: Any) -> None:
    batch = torch_engine.step_batch()
    short, long = row(torch_engine, "short", "hello"), row(torch_engine, "long", TEXT)
    batch.join([short, long])
    batch.step()
    assert batch.cache_tokens == 2 * len(long.prompt_ids)
    batch.step()
    assert batch.cache_tokens == 2 * (len(long.prompt_ids) + 1)
    batch.leave([long])
    assert batch.cache_tokens == len(short.prompt_ids) + 1
    batch.leave([short])
    assert (batch.size, batch.cache_tokens) == (0, 0)


def test_models_whose_cache_cannot_be_padded_are_recognised() -> None:
    from transformers import DynamicCache, LlamaConfig, MistralConfig

    from runtime.torch_engine.kvcache import plain_layers

    llama = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=64)
    assert plain_layers(DynamicCache(config=llama)) is None
    mistral = MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, sliding_window=16)
    assert plain_layers(DynamicCache(config=mistral)) == "DynamicSlidingWindowLayer"
