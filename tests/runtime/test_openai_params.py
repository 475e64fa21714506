"""The OpenAI sampling parameters on the demo model, through both schedulers: log-probabilities, penalties,
``logit_bias``, echo and token prompts; rows with and without them share a batch without changing each other."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from runtime.output.logprobs import Logprob
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.torch_engine.prompt_logprobs import prompt_logprobs
from tests.runtime.support import TEXT, alone, errors, finishes, greedy, mixed_batch, read_events, run_batch, sampled
from wire import FinishEvent, GenerationRequest, SamplingParams, TokenEvent

pytestmark = pytest.mark.unit


def with_params(request: GenerationRequest, **params: Any) -> GenerationRequest:
    return request.model_copy(update={"params": request.params.model_copy(update=params)})


def assert_same_output(got: FinishEvent, expected: FinishEvent) -> None:
    """Same tokens; log-probabilities equal up to the rounding of differently shaped matrix products."""
    assert (got.text, got.finish_reason, got.usage) == (expected.text, expected.finish_reason, expected.usage)
    assert (got.logprobs is None) == (expected.logprobs is None)
    for mine, theirs in zip(got.logprobs or (), expected.logprobs or (), strict=True):
        assert (mine.token, mine.bytes) == (theirs.token, theirs.bytes)
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-3)


def test_rows_without_the_new_parameters_are_unchanged_by_rows_with_them(torch_engine: Any) -> None:
    plain = [*mixed_batch(8), sampled("s1", seed=3), sampled("s2", seed=4)]
    before = finishes(run_batch(torch_engine, plain))
    fancy = [
        with_params(greedy("f1", prompt="the runtime goes away"), logprobs=5),
        with_params(sampled("f2", seed=9), presence_penalty=1.5, frequency_penalty=0.5),
        with_params(greedy("f3", chat="a queue of requests"), logit_bias={10: 3.0, 11: -100.0}),
    ]
    events = run_batch(torch_engine, [fancy[0], *plain[:5], fancy[1], *plain[5:], fancy[2]])
    together = finishes(events)
    for request in plain:
        assert together[request.id] == before[request.id], request.id
    for request in fancy:
        assert_same_output(together[request.id], alone(torch_engine, request))


def test_logprobs_line_up_with_the_completion_tokens(torch_engine: Any) -> None:
    request = greedy("lp", prompt="the gateway keeps", max_tokens=12, logprobs=3, stream=True)
    events = run_batch(torch_engine, [request])
    done = finishes(events)["lp"]
    assert done.logprobs is not None
    assert len(done.logprobs) == done.usage.completion_tokens == 12
    assert bytes(b for entry in done.logprobs for b in entry.bytes).decode() == done.text
    assert "".join(entry.token for entry in done.logprobs) == done.text
    for entry in done.logprobs:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token, "greedy takes the most likely token"
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob is not None and entry.logprob <= 0.0
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    streamed = [entry for e in events if isinstance(e, TokenEvent) for entry in e.logprobs]
    assert tuple(streamed) == done.logprobs


def test_a_bias_of_100_forces_its_token(torch_engine: Any) -> None:
    token = torch_engine.tokenizer(" fish", add_special_tokens=False)["input_ids"][-1]
    text = torch_engine.tokenizer.decode([token])
    for request in (greedy("g", prompt="hello", max_tokens=5), sampled("s", seed=5)):
        done = alone(torch_engine, with_params(request, logit_bias={token: 100.0}, max_tokens=5, logprobs=0))
        assert done.text == text * 5
        assert done.logprobs is not None and all(e.logprob == pytest.approx(0.0, abs=1e-3) for e in done.logprobs)


def test_penalties_change_the_answer_and_stay_reproducible(torch_engine: Any) -> None:
    """The demo model's logits are too peaked for a penalty of 2 to move a greedy choice, so this samples:
    the same seed, three penalties. A negative penalty makes tokens repeat, a positive one makes them rarer."""

    def distinct(done: FinishEvent) -> float:
        ids = torch_engine.tokenizer(done.text, add_special_tokens=False)["input_ids"]
        return len(set(ids)) / len(ids)

    repeats = {-2.0: 0.0, 2.0: 0.0}
    for seed in range(3):
        plain = alone(torch_engine, sampled("p", seed=seed))
        for penalty in repeats:
            penalised = with_params(sampled("p", seed=seed), frequency_penalty=penalty, presence_penalty=penalty)
            once = alone(torch_engine, penalised)
            assert once.text != plain.text
            repeats[penalty] += distinct(once)
            assert finishes(run_batch(torch_engine, [*mixed_batch(3), penalised]))["p"] == once
    assert repeats[-2.0] < repeats[2.0]


def test_echo_returns_the_prompt_and_its_logprobs(torch_engine: Any) -> None:
    prompt = "the gateway keeps every request"
    request = GenerationRequest(
        id="e", prompt=prompt, echo=True, params=SamplingParams(max_tokens=4, temperature=0.0, logprobs=2)
    )
    done = alone(torch_engine, request)
    plain = alone(torch_engine, greedy("p", prompt=prompt, max_tokens=4))
    assert done.text == prompt + plain.text
    assert done.logprobs is not None
    prompt_entries = done.logprobs[: done.usage.prompt_tokens]
    assert prompt_entries[0].logprob is None and prompt_entries[0].top_logprobs == ()
    assert "".join(e.token for e in done.logprobs) == done.text  # the BOS token adds no text
    assert len(done.logprobs) == done.usage.prompt_tokens + 4
    assert all(len(e.top_logprobs) == 2 for e in done.logprobs[1:])


def test_prompt_logprobs_in_chunks_equal_one_whole_forward_pass(chunked_engine: Any) -> None:
    ids = chunked_engine.tokenizer(TEXT)["input_ids"]
    model = chunked_engine._model
    scores = prompt_logprobs(model, ids, k=3, chunk=4)
    with torch.inference_mode():
        whole = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    assert scores[0] == Logprob(None)
    for position, score in enumerate(scores[1:], start=1):
        # fp32 sums in another order (chunks with a KV cache vs one pass): ~1e-4 apart at a logprob of -21 on some
        # CPUs (5e-6 relative); a misaligned position would be off by whole units.
        expected = float(whole[position - 1, ids[position]])
        assert score.logprob == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert [token for token, _ in score.top] == whole[position - 1].topk(3).indices.tolist()


def test_a_token_prompt_is_the_same_as_its_text(torch_engine: Any) -> None:
    ids = tuple(torch_engine.tokenizer("a queue of requests")["input_ids"])
    by_text = alone(torch_engine, greedy("t", prompt="a queue of requests"))
    by_ids = alone(torch_engine, GenerationRequest(id="t", prompt_token_ids=ids, params=by_text_params()))
    assert by_ids == by_text
    echoed = alone(torch_engine, GenerationRequest(id="t", prompt_token_ids=ids, echo=True, params=by_text_params()))
    assert echoed.text == "a queue of requests" + by_text.text


def by_text_params() -> SamplingParams:
    return SamplingParams(max_tokens=24, temperature=0.0)


def test_token_ids_outside_the_vocabulary_are_refused(torch_engine: Any) -> None:
    size = torch_engine._vocabulary_size
    bad_prompt = GenerationRequest(id="a", prompt_token_ids=(1, size), params=by_text_params())
    bad_bias = greedy("b", prompt="hi", logit_bias={size + 5: 1.0})
    found = errors(run_batch(torch_engine, [bad_prompt, bad_bias, greedy("ok", prompt="hi")]))
    assert f"prompt token id {size} is outside" in found["a"].message
    assert f"logit_bias names token id {size + 5}" in found["b"].message
    assert set(found) == {"a", "b"}


async def test_rows_with_the_new_parameters_join_a_running_batch_as_if_alone(chunked_engine: Any) -> None:
    scheduler = ContinuousScheduler(chunked_engine, Budget(rows=8, tokens=8192))
    try:
        running = scheduler.submit([greedy("long", prompt="a queue", max_tokens=60, stream=True)])
        joining = [
            with_params(greedy("lp", prompt=TEXT, max_tokens=10, stream=True), logprobs=4),
            with_params(sampled("pen", seed=2), frequency_penalty=1.0, logit_bias={5: -100.0}),
            GenerationRequest(
                id="echo", prompt="the gateway", echo=True, params=SamplingParams(max_tokens=3, logprobs=1, seed=1)
            ),
        ]
        late = await read_events(scheduler.submit(joining).lines())
        await read_events(running.lines())
    finally:
        scheduler.close()
    for request in joining:
        assert_same_output(finishes(late)[request.id], alone(chunked_engine, request))
