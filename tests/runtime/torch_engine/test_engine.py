"""The torch engine on the demo model: batching must not change any request's output."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.cancellation import Cancellation, cancelled_event
from runtime.engine.interface import BatchEvent
from tests.runtime.support import (
    WORDS,
    alone,
    errors,
    finishes,
    greedy,
    mixed_batch,
    run_batch,
    sampled,
    streamed_text,
    tokens_of,
)
from wire import FinishEvent, TokenEvent

pytestmark = pytest.mark.unit


def test_greedy_batch_of_16_equals_each_request_alone(torch_engine: Any) -> None:
    requests = mixed_batch()
    together = finishes(run_batch(torch_engine, requests))
    assert len({len(str(r.prompt or r.messages)) for r in requests}) > 8, "prompts must differ in length"
    for request in requests:
        single = alone(torch_engine, request)
        assert together[request.id] == single, request.id
        assert single.finish_reason == "length"
        assert single.usage.completion_tokens == 24
    assert len({f.text for f in together.values()}) == len(requests), "random weights should still vary"


def test_streamed_deltas_concatenate_to_the_finished_text(torch_engine: Any) -> None:
    plain = finishes(run_batch(torch_engine, mixed_batch(6)))
    streaming = mixed_batch(6, stream=True)
    events = run_batch(torch_engine, streaming)
    done = finishes(events)
    for request in streaming:
        assert streamed_text(events, request.id) == done[request.id].text == plain[request.id].text
        assert sum(isinstance(e, TokenEvent) and e.id == request.id for e in events) > 1
    assert not any(isinstance(e, TokenEvent) and e.text == "" for e in events)


def test_events_of_a_request_end_with_its_finish(torch_engine: Any) -> None:
    events = run_batch(torch_engine, mixed_batch(4, stream=True))
    for request_id in ("r0", "r1", "r2", "r3"):
        own = [e for e in events if e.id == request_id]
        assert isinstance(own[-1], FinishEvent)
        assert all(isinstance(e, TokenEvent) for e in own[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_truncates_the_text(torch_engine: Any, stream: bool) -> None:
    request = greedy("s", prompt="the runtime goes away", max_tokens=40)
    full = alone(torch_engine, request).text
    stop = full[12:15]
    expected = full[: full.index(stop)]
    stopping = greedy("s", prompt="the runtime goes away", max_tokens=40, stop=("never there", stop), stream=stream)
    mate = greedy("m", prompt="a queue", max_tokens=40)
    events = run_batch(torch_engine, [mate, stopping])
    done = finishes(events)
    assert done["s"].text == expected
    assert done["s"].finish_reason == "stop"
    assert done["s"].usage.completion_tokens < 40
    assert done["m"].finish_reason == "length"
    if stream:
        assert streamed_text(events, "s") == expected


def test_max_tokens_ends_with_length(torch_engine: Any) -> None:
    done = finishes(run_batch(torch_engine, [greedy("a", prompt="hello", max_tokens=3), greedy("b", prompt="hi")]))
    assert done["a"].finish_reason == "length"
    assert done["a"].usage.completion_tokens == 3
    assert done["b"].usage.completion_tokens == 24
    assert done["a"].usage.total_tokens == done["a"].usage.prompt_tokens + 3


def test_seed_makes_sampling_independent_of_batch_mates(torch_engine: Any) -> None:
    solo = alone(torch_engine, sampled("x", seed=7))
    mates = [sampled(f"m{i}", seed=100 + i, prompt=" ".join(WORDS[: 3 + 5 * i])) for i in range(7)]
    crowd = finishes(run_batch(torch_engine, [*mates[:3], sampled("x", seed=7), *mates[3:]]))
    assert crowd["x"] == solo
    greedy_text = alone(torch_engine, greedy("g", prompt="tell me about the weather")).text
    other_seed = alone(torch_engine, sampled("x", seed=8)).text
    assert solo.text != greedy_text, "temperature 1.5 should leave the greedy path"
    assert solo.text != other_seed


def test_too_long_prompt_fails_alone(torch_engine: Any) -> None:
    context = torch_engine.context_length
    long_prompt = " ".join(["queue"] * context)
    requests = [
        greedy("ok1", prompt="hello"),
        greedy("long", prompt=long_prompt),
        greedy("edge", prompt="hello", max_tokens=context),
        greedy("ok2", chat="hello"),
    ]
    events = run_batch(torch_engine, requests)
    assert set(errors(events)) == {"long", "edge"}
    assert all(e.code == "invalid_request" for e in errors(events).values())
    assert set(finishes(events)) == {"ok1", "ok2"}


def test_prompt_exactly_filling_the_context_runs(torch_engine: Any) -> None:
    prompt_tokens = alone(torch_engine, greedy("p", prompt="hello there", max_tokens=1)).usage.prompt_tokens
    room = torch_engine.context_length - prompt_tokens
    fits = greedy("fits", prompt="hello there", max_tokens=room, stream=True)
    cancellation = Cancellation()
    first = next(iter(torch_engine.generate([fits], cancellation)))
    cancellation.cancel_batch()
    assert isinstance(first, TokenEvent)


def test_a_request_generates_up_to_the_last_context_position_and_not_one_beyond(torch_engine: Any) -> None:
    context = torch_engine.context_length
    prompt = " ".join(["queue"] * (context - 8))  # a few positions left, so that generating them all is quick
    prompt_tokens = alone(torch_engine, greedy("p", prompt=prompt, max_tokens=1)).usage.prompt_tokens
    room = context - prompt_tokens
    assert 1 < room < context // 2
    done = alone(torch_engine, greedy("fits", prompt=prompt, max_tokens=room))
    assert done.finish_reason == "length" and done.usage.completion_tokens == room
    assert done.usage.total_tokens == context  # the last position holds a generated token
    refused = errors(run_batch(torch_engine, [greedy("over", prompt=prompt, max_tokens=room + 1)]))
    assert refused["over"].code == "invalid_request" and f"context of {context}" in refused["over"].message


def test_chat_requests_use_the_chat_template(torch_engine: Any) -> None:
    tokenizer = torch_engine.tokenizer
    content = "how are you today"
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert expected.startswith("<|bos|><|user|>\n") and expected.endswith("<|assistant|>\n")
    done = alone(torch_engine, greedy("c", chat=content, max_tokens=1))
    assert done.usage.prompt_tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])


def test_cancelling_stops_the_batch_without_finishing(torch_engine: Any) -> None:
    cancellation = Cancellation()
    seen: list[BatchEvent] = []
    for event in torch_engine.generate(mixed_batch(4, stream=True, max_tokens=200), cancellation):
        seen.append(event)
        cancellation.cancel_batch()
    assert seen and not finishes(seen)


def test_a_cancelled_row_stops_at_the_next_step_and_the_rest_are_unchanged(torch_engine: Any) -> None:
    requests = mixed_batch(4, stream=True, max_tokens=200)
    cancellation = Cancellation(r.id for r in requests)
    cancellation.start()
    seen: list[BatchEvent] = []
    after_cancel: list[BatchEvent] = []
    for event in torch_engine.generate(requests, cancellation):
        (after_cancel if cancellation.request("r1") else seen).append(event)
        if tokens_of(seen, "r1") == 5 and not cancellation.request("r1"):
            cancellation.cancel(["r1"])
    own = [e for e in after_cancel if e.id == "r1"]
    assert own == [cancelled_event("r1")], "no token after the cancel, and the error at the very next step"
    done = finishes(seen + after_cancel)
    assert set(done) == {"r0", "r2", "r3"}
    for request in requests:
        if request.id != "r1":
            assert done[request.id] == alone(torch_engine, request), "dropping a row must not disturb the others"


def test_the_batch_ends_early_once_every_row_is_cancelled(torch_engine: Any) -> None:
    requests = mixed_batch(3, stream=True, max_tokens=200)
    cancellation = Cancellation(r.id for r in requests)
    cancellation.start()
    seen: list[BatchEvent] = []
    for event in torch_engine.generate(requests, cancellation):
        seen.append(event)
        cancellation.cancel([event.id])
    assert sorted(e.id for e in seen if e == cancelled_event(e.id)) == ["r0", "r1", "r2"]
    assert len(seen) <= 6, "at most one token per row before the cancels, then the errors"
