"""Several choices per request: one wire request each, in OpenAI's order, with derived seeds; usage merged."""

from __future__ import annotations

from typing import Any

import pytest

import wire
from gateway.api.choices import choice_seed, fan_out, merged_usage
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest, parse_request

pytestmark = pytest.mark.unit


def completion(**fields: Any) -> CompletionRequest:
    return parse_request(CompletionRequest, {"model": "m", "prompt": "a"} | fields)


def test_one_choice_is_the_request_it_always_was() -> None:
    (request,) = fan_out(completion(seed=7, max_tokens=3), "cmpl-1", 16)
    assert request == wire.GenerationRequest(id="cmpl-1", prompt="a", params=wire.SamplingParams(max_tokens=3, seed=7))
    (unseeded,) = fan_out(completion(), "cmpl-2", 16)
    assert unseeded.params.seed is not None


def test_choices_are_ordered_prompt_by_prompt_with_n_each() -> None:
    requests = fan_out(completion(prompt=[[4], [5, 6]], n=3, seed=11, stream=True), "cmpl-x", 16)
    assert [r.id for r in requests] == [f"cmpl-x-{i}" for i in range(6)]
    assert [r.prompt_token_ids for r in requests] == [(4,)] * 3 + [(5, 6)] * 3
    seeds = [r.params.seed for r in requests]
    assert seeds[:3] == seeds[3:], "choice j of every prompt samples alike"
    assert seeds[0] == 11 and len(set(seeds[:3])) == 3
    assert all(r.stream for r in requests)


def test_a_seeded_request_fans_out_the_same_way_every_time() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 4, "seed": 99}
    first = fan_out(parse_request(ChatCompletionRequest, body), "c", 16)
    again = fan_out(parse_request(ChatCompletionRequest, body), "c", 16)
    assert first == again
    assert [choice_seed(99, j) for j in range(4)] == [r.params.seed for r in first]
    assert all(0 <= choice_seed(2**63 - 1, j) <= 2**63 - 1 for j in range(50))


def test_usage_counts_each_prompt_once() -> None:
    def finish(prompt: int, completion: int) -> wire.FinishEvent:
        usage = wire.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        return wire.FinishEvent(id="x", text="", finish_reason="length", usage=usage)

    results = [finish(5, 1), finish(5, 2), finish(9, 3), finish(9, 4)]  # two prompts, n = 2
    assert merged_usage(results, 2) == wire.Usage(prompt_tokens=14, completion_tokens=10, total_tokens=24)
    assert merged_usage(results[:1], 1) == results[0].usage
