"""The continuous scheduler in-process, on the demo model and the echo engine: rows that join a running batch or
outlive their neighbours generate exactly what they would alone; the budget holds; cancels act within a step."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from runtime.cancellation import cancelled_event
from runtime.engine.echo import EchoBatch, EchoEngine, EchoRow
from runtime.engine.interface import NextToken, StepEngine, row_cost
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler, Load
from runtime.server.app import RunningBatch
from tests.runtime.support import (
    TEXT,
    WORDS,
    HoldingEcho,
    alone,
    finishes,
    greedy,
    read_events,
    read_until,
    sampled,
    streamed_text,
    tokens_of,
)
from wire import ErrorEvent, GenerationRequest, SamplingParams, TokenEvent

pytestmark = pytest.mark.unit

ROOMY = Budget(rows=16, tokens=16384)
Make = Callable[..., ContinuousScheduler[Any]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds schedulers (``make(engine, budget, observer)``) and closes them when the test ends."""
    made: list[ContinuousScheduler[Any]] = []

    def build(
        engine: StepEngine[Any], budget: Budget = ROOMY, observer: Callable[[Load], None] | None = None
    ) -> ContinuousScheduler[Any]:
        made.append(ContinuousScheduler(engine, budget, observer))
        return made[-1]

    yield build
    for scheduler in made:
        scheduler.close()


def has_finished(*request_ids: str) -> Callable[[list[Any]], bool]:
    return lambda events: all(any(e.id == i and not isinstance(e, TokenEvent) for e in events) for i in request_ids)


async def test_rows_that_join_mid_flight_or_outlive_their_neighbours_decode_as_if_alone(
    make: Make, chunked_engine: Any, torch_engine: Any
) -> None:
    first = [
        greedy("long", prompt=" ".join(WORDS[:9]), max_tokens=200, stream=True),
        greedy("short", prompt="a queue", max_tokens=4),
        greedy("cancelled", chat="hello there", max_tokens=60, stream=True),
    ]
    second = [
        greedy("late-long-prompt", prompt=TEXT, max_tokens=20, stream=True),
        greedy("late-chat", chat=" ".join(WORDS[5:12]), max_tokens=12),
        sampled("late-sampled", seed=11),
    ]
    loads: list[Load] = []
    scheduler = make(chunked_engine, observer=loads.append)
    lines = scheduler.submit(first).lines()
    events = await read_until(lines, lambda ev: tokens_of(ev, "cancelled") >= 3)
    assert scheduler.cancel(["cancelled"]) == ("cancelled",)
    events = await read_until(lines, has_finished("short", "cancelled"), events)
    assert "long" not in finishes(events), "the first batch must still be decoding when the second arrives"
    joined = scheduler.submit(second).lines()
    rest, late = await asyncio.gather(read_events(lines), read_events(joined))
    events += rest

    done = finishes(events) | finishes(late)
    for request in [first[0], first[1], *second]:
        assert done[request.id] == alone(torch_engine, request), request.id
    assert [e for e in events if e.id == "cancelled"][-1] == cancelled_event("cancelled")
    assert streamed_text(late, "late-long-prompt") == done["late-long-prompt"].text
    assert any(load.rows == 4 for load in loads), "the late rows decoded together with the long one"
    assert len(TEXT.split()) > 4 * 4, "the long prompt takes several prefill chunks of 4 tokens"


async def test_stop_sequences_and_streaming_work_for_a_joining_row(
    make: Make, chunked_engine: Any, torch_engine: Any
) -> None:
    full = alone(torch_engine, greedy("s", prompt="the runtime goes away", max_tokens=40)).text
    stop = full[12:15]
    expected = full[: full.index(stop)]
    scheduler = make(chunked_engine)
    running = scheduler.submit([greedy("m", prompt="a queue", max_tokens=80, stream=True)]).lines()
    before = await read_until(running, lambda ev: tokens_of(ev, "m") >= 2)
    stopping = greedy("s", prompt="the runtime goes away", max_tokens=40, stop=("never there", stop), stream=True)
    events = await read_events(scheduler.submit([stopping]).lines())
    assert finishes(events)["s"].text == expected == streamed_text(events, "s")
    assert finishes(events)["s"].finish_reason == "stop"
    mate = greedy("m", prompt="a queue", max_tokens=80, stream=True)
    assert finishes(before + await read_events(running))["m"] == alone(torch_engine, mate)


async def test_requests_beyond_the_row_budget_wait_and_then_run(make: Make, torch_engine: Any) -> None:
    loads: list[Load] = []
    scheduler = make(torch_engine, Budget(rows=2, tokens=16384), loads.append)
    a = [greedy("a0", prompt=TEXT, max_tokens=30), greedy("a1", prompt="a queue", max_tokens=10)]
    b = [greedy("b0", chat="hello", max_tokens=10), greedy("b1", prompt="the runtime", max_tokens=10)]
    first, second = scheduler.submit(a), scheduler.submit(b)
    assert scheduler.free_rows == 0
    done = finishes(await read_events(first.lines())) | finishes(await read_events(second.lines()))
    for request in a + b:
        assert done[request.id] == alone(torch_engine, request), request.id
    assert max(load.rows for load in loads) == 2
    assert any(load.waiting for load in loads), "some rows must have waited for room"
    assert scheduler.high_water.rows == 2
    assert scheduler.free_rows == 2


async def test_the_token_budget_makes_requests_wait_in_order_and_the_cache_stays_within_it(
    make: Make, torch_engine: Any
) -> None:
    first = greedy("first", prompt=TEXT, max_tokens=60)
    big = greedy("big", prompt="hello", max_tokens=120)
    small = greedy("small", prompt="hi", max_tokens=4)
    cost = {r.id: row_cost(torch_engine.prepare(r).completion) for r in (first, big, small)}
    assert cost["big"] > cost["first"] > cost["small"]
    # first + small would fit, first + big would not: small must not overtake big, which waits for first.
    budget = Budget(rows=4, tokens=2 * cost["first"])
    loads: list[Load] = []
    scheduler = make(torch_engine, budget, loads.append)
    done = finishes(await read_events(scheduler.submit([first, big, small]).lines()))
    for request in (first, big, small):
        assert done[request.id] == alone(torch_engine, request), request.id
    assert all(load.rows == 1 for load in loads), "each request ran alone: none fit next to another"
    waiting = [load.waiting for load in loads]
    assert waiting == sorted(waiting, reverse=True) and waiting[0] == 2 and waiting[-1] == 0
    assert waiting.count(2) == 60, "big and small both waited while first generated its 60 tokens"
    for load in loads:
        assert load.reserved_tokens <= budget.tokens
        assert 0 < load.cache_tokens <= load.reserved_tokens


async def test_a_cancelled_row_leaves_at_the_next_step(make: Make, torch_engine: Any) -> None:
    held: list[RunningBatch] = []
    loads: list[Load] = []
    cancelled_at: list[int] = []

    def observe(load: Load) -> None:  # on the generation thread, between two steps
        loads.append(load)
        if held and load.step >= 5 and not cancelled_at:
            held[0].cancellation.cancel(["x"])
            cancelled_at.append(load.step)

    scheduler = make(torch_engine, observer=observe)
    y = greedy("y", prompt="a queue", max_tokens=30, stream=True)
    held.append(scheduler.submit([greedy("x", prompt=TEXT, max_tokens=200, stream=True), y]))
    events = await read_events(held[0].lines())
    (step,) = cancelled_at
    assert [load.rows for load in loads[step - 1 : step + 1]] == [2, 1], "gone from the very next step"
    own = [e for e in events if e.id == "x"]
    assert own[-1] == cancelled_event("x") and tokens_of(own, "x") <= step - 1, "the cancelled step's token unsent"
    assert finishes(events)["y"] == alone(torch_engine, y)


async def test_a_request_waiting_for_room_is_cancelled_without_running(make: Make, torch_engine: Any) -> None:
    loads: list[Load] = []
    queued = threading.Event()

    def observe(load: Load) -> None:
        loads.append(load)
        if load.waiting:
            queued.set()

    scheduler = make(torch_engine, Budget(rows=1, tokens=16384), observe)
    lines = scheduler.submit([greedy("runs", prompt="hello", max_tokens=400, stream=True)]).lines()
    events = await read_until(lines, lambda ev: tokens_of(ev, "runs") >= 2)
    waiting = scheduler.submit([greedy("waits", prompt="hi", max_tokens=4, stream=True)])
    assert await asyncio.to_thread(queued.wait, 30), "taken in, waiting for room"
    assert scheduler.cancel(["waits"]) == ("waits",)
    seen = len(loads)
    assert await read_events(waiting.lines()) == [cancelled_event("waits")]
    await read_until(lines, lambda ev: tokens_of(ev, "runs") >= 2 + 8, events)
    assert scheduler.cancel(["runs"]) == ("runs",)
    assert (await read_events(lines))[-1] == cancelled_event("runs")
    assert all(load.waiting == 0 for load in loads[seen + 1 :]), "it left the queue within one step"


async def test_a_client_that_leaves_cancels_only_its_own_rows(
    make: Make, torch_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = make(torch_engine)
    leaving = scheduler.submit([greedy(f"l{i}", prompt=WORDS[i], max_tokens=300, stream=True) for i in range(2)])
    leaving_lines = leaving.lines()
    await read_until(leaving_lines, lambda ev: tokens_of(ev, "l0") >= 1)
    stays = greedy("stays", prompt=TEXT, max_tokens=40)
    staying = scheduler.submit([stays])
    with caplog.at_level(logging.INFO, logger="runtime.scheduling.batches"):
        await leaving_lines.aclose()  # what the response does when its client disconnects
        assert finishes(await read_events(staying.lines()))["stays"] == alone(torch_engine, stays)
    assert any("batch of 2:" in r.message and "cancelled with 2 unfinished" in r.message for r in caplog.records)
    assert scheduler.cancel(["l0", "l1"]) == ()


async def test_a_request_larger_than_the_token_budget_is_refused_at_once(make: Make) -> None:
    scheduler = make(EchoEngine(), Budget(rows=4, tokens=10))
    assert scheduler.context_length == 10
    request = GenerationRequest(id="big", prompt="one two three", params=SamplingParams(max_tokens=8))
    fits = GenerationRequest(id="fits", prompt="one two", params=SamplingParams(max_tokens=8))
    events = await read_events(scheduler.submit([request, fits]).lines())
    assert isinstance(refused := events[0], ErrorEvent) and refused.code == "invalid_request"
    assert "max_batch_tokens of 10" in refused.message
    assert finishes(events)["fits"].text == "one two"


def echo(request_id: str, words: int, max_tokens: int | None = None, stream: bool = True) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens or words)
    prompt = " ".join(f"w{i}" for i in range(words))
    return GenerationRequest(id=request_id, prompt=prompt, params=params, stream=stream)


async def test_the_echo_engine_serves_several_open_batches_at_once(make: Make) -> None:
    scheduler = make(HoldingEcho(until=3), Budget(rows=4, tokens=10**6))
    long_lines = scheduler.submit([echo("long", 500)]).lines()
    short_lines = scheduler.submit([echo("s1", 3), echo("s2", 4, stream=False)]).lines()
    assert scheduler.free_rows == 1
    short = await read_events(short_lines)
    assert (finishes(short)["s1"].text, finishes(short)["s2"].text) == ("w0 w1 w2", "w0 w1 w2 w3")
    assert streamed_text(short, "s1") == "w0 w1 w2"
    events = await read_events(long_lines)
    assert finishes(events)["long"].text == streamed_text(events, "long") == " ".join(f"w{i}" for i in range(500))
    assert scheduler.high_water.rows == 3, "the short rows ran next to the long one"
    assert scheduler.free_rows == 4


class FailingEcho(EchoEngine):
    """An echo engine whose batch fails once, at a given step (a CUDA error, say)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.steps = 0

    def step_batch(self, *, running_joins: bool = True) -> EchoBatch:
        engine = self

        class Failing(EchoBatch):
            def step(self) -> list[NextToken[EchoRow]]:
                engine.steps += 1
                if engine.steps == engine.fail_at:
                    raise RuntimeError("device lost")
                return super().step()

        return Failing()


async def test_a_failed_step_fails_the_rows_in_the_batch_and_the_waiting_ones_run_after(make: Make) -> None:
    scheduler = make(FailingEcho(fail_at=3), Budget(rows=1, tokens=1000))
    failing = scheduler.submit([echo("a", 10)])
    later = scheduler.submit([echo("b", 3)])
    events = await read_events(failing.lines())
    assert tokens_of(events, "a") == 2
    assert events[-1] == ErrorEvent(id="a", code="internal", message="the runtime failed while generating")
    assert finishes(await read_events(later.lines()))["b"].text == "w0 w1 w2"


def test_step_engines_are_recognised() -> None:
    from runtime.engine.interface import as_step_engine

    assert as_step_engine(EchoEngine()) is not None

    class GenerateOnly:
        def generate(self) -> Iterator[None]:
            yield None

    assert as_step_engine(GenerateOnly()) is None  # type: ignore[arg-type]
