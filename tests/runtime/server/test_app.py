"""The HTTP surface in-process: readiness during loading, request validation, streaming, and cancellation of
whole batches (the client left) and of single requests (``POST /v1/cancel``), running or queued."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect

from runtime.cancellation import Cancellation, cancelled_event
from runtime.engine.echo import DEFAULT_BATCH_TOKENS, EchoEngine
from runtime.engine.interface import BatchEvent, Engine, LoadReport
from runtime.server.app import BatchResponse, ContinuousScheduler, Readiness, StaticScheduler, create_app
from runtime.settings import RuntimeSettings
from tests.runtime.support import HoldingEcho, finishes, tokens_of
from wire import (
    BATCH_PATH,
    CANCEL_PATH,
    FREE_ROWS_HEADER,
    HEALTH_PATH,
    MAX_CANCEL_IDS,
    NDJSON,
    READY_PATH,
    BatchEventAdapter,
    CancelResponse,
    ErrorBody,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    ReadyBody,
    SamplingParams,
    TokenEvent,
    Usage,
)

pytestmark = pytest.mark.unit

SETTINGS = RuntimeSettings.from_args(["--engine", "echo", "--model-name", "echo-model", "--max-batch-size", "4"], {})


def batch_body(*prompts: str, model: str = "echo-model", stream: bool = True) -> dict[str, object]:
    requests = [{"id": f"r{i}", "prompt": p, "stream": stream} for i, p in enumerate(prompts)]
    return {"model": model, "requests": requests}


@pytest.fixture
async def started() -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, threading.Event]]:
    """An app whose loader blocks until the test sets the returned event."""
    release = threading.Event()

    def loader() -> Engine:
        assert release.wait(timeout=30)
        return EchoEngine()

    app = create_app(SETTINGS, loader=loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            yield app, client, release
    release.set()


async def settle(app: Starlette) -> Readiness:
    readiness: Readiness = app.state.readiness
    await asyncio.wait_for(readiness.decided.wait(), timeout=30)
    return readiness


async def test_alive_but_not_ready_while_loading(started: tuple[Starlette, httpx.AsyncClient, threading.Event]) -> None:
    app, client, release = started
    assert (await client.get(HEALTH_PATH)).status_code == 200
    not_ready = await client.get(READY_PATH)
    assert not_ready.status_code == 503
    ErrorBody.model_validate_json(not_ready.content)
    busy = await client.post(BATCH_PATH, json=batch_body("hello"))
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"

    release.set()
    await settle(app)
    ready = await client.get(READY_PATH)
    assert ready.status_code == 200
    assert ReadyBody.model_validate_json(ready.content) == ReadyBody(
        model="echo-model",
        max_batch_size=4,
        context_length=32768,
        scheduler="continuous",
        max_batch_tokens=DEFAULT_BATCH_TOKENS,
        free_rows=4,
    )


async def test_batch_streams_ndjson(started: tuple[Starlette, httpx.AsyncClient, threading.Event]) -> None:
    app, client, release = started
    release.set()
    await settle(app)
    response = await client.post(BATCH_PATH, json=batch_body("one two three", "four"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(NDJSON)
    events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines()]
    assert [e.text for e in events if isinstance(e, TokenEvent) and e.id == "r0"] == ["one", " two", " three"]
    done = {e.id: e for e in events if isinstance(e, FinishEvent)}
    assert (done["r0"].text, done["r1"].text) == ("one two three", "four")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "echo-model", "requests": []}', 422, "requests"),
        (b'{"model": "echo-model", "requests": [{"id": "a"}]}', 422, "prompt"),
        (b'{"model": "other", "requests": [{"id": "a", "prompt": "x"}]}', 404, "echo-model"),
    ],
)
async def test_bad_batches_are_refused(
    started: tuple[Starlette, httpx.AsyncClient, threading.Event], body: bytes, status: int, fragment: str
) -> None:
    app, client, release = started
    release.set()
    await settle(app)
    response = await client.post(BATCH_PATH, content=body)
    assert response.status_code == status
    assert fragment in ErrorBody.model_validate_json(response.content).error


async def test_more_requests_than_max_batch_size_is_413(
    started: tuple[Starlette, httpx.AsyncClient, threading.Event],
) -> None:
    app, client, release = started
    release.set()
    await settle(app)
    response = await client.post(BATCH_PATH, json=batch_body("a", "b", "c", "d", "e"))
    assert response.status_code == 413
    ErrorBody.model_validate_json(response.content)


async def test_failed_load_is_reported_and_fatal() -> None:
    fatal = asyncio.Event()

    def loader() -> Engine:
        raise OSError("disk on fire")

    app = create_app(SETTINGS, loader=loader, on_fatal=fatal.set)
    async with app.router.lifespan_context(app):
        readiness = await settle(app)
        assert readiness.failed and fatal.is_set()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            response = await client.get(READY_PATH)
    assert response.status_code == 503
    assert "disk" not in response.text


async def test_ready_body_reports_startup_timings_of_the_default_loader() -> None:
    app = create_app(SETTINGS)  # prepare_engine with the echo engine: no cache, no torch
    async with app.router.lifespan_context(app):
        await settle(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
            ready = ReadyBody.model_validate_json((await client.get(READY_PATH)).content)
    startup = ready.startup
    assert startup is not None
    assert startup.process_s is not None  # this test runs on Linux
    assert startup.total_s >= startup.process_s
    assert min(startup.cache_s, startup.imports_s, startup.load_s, startup.warmup_s) >= 0


class EndlessEngine:
    """Streams tokens until cancelled; records that generation really stopped."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.stopped = threading.Event()
        self._fail_after = fail_after

    @property
    def context_length(self) -> int:
        return 100

    def load(self) -> LoadReport:
        return LoadReport(0.0, 0, "none", "none")

    def warmup(self) -> None:
        return None

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        try:
            step = 0
            while not cancellation.batch:
                if self._fail_after is not None and step == self._fail_after:
                    raise RuntimeError("device lost")
                yield TokenEvent(id=requests[0].id, text="x")
                step += 1
        finally:
            self.stopped.set()


class EndlessUnlessFree(EndlessEngine):
    """Endless, except that a batch whose first prompt is "free" is echoed (and so ends)."""

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        if requests[0].prompt == "free":
            return EchoEngine().generate(requests, cancellation)
        return super().generate(requests, cancellation)


async def wait_thread_event(event: threading.Event) -> bool:
    return await asyncio.to_thread(event.wait, 30)


async def test_closing_the_stream_cancels_the_batch() -> None:
    engine = EndlessEngine()
    runner = StaticScheduler(engine)
    lines = runner.submit([GenerationRequest(id="a", prompt="x")]).lines()
    first = await anext(lines)
    assert BatchEventAdapter.validate_json(first) == TokenEvent(id="a", text="x")
    await lines.aclose()
    assert await wait_thread_event(engine.stopped)
    assert runner.cancel(["a"]) == (), "a closed batch leaves the registry"
    runner.close()


async def test_engine_failure_becomes_internal_errors_for_unfinished_requests() -> None:
    runner = StaticScheduler(EndlessEngine(2))
    requests = [GenerationRequest(id="a", prompt="x"), GenerationRequest(id="b", prompt="y")]
    events = await read_all(runner.submit(requests).lines())
    runner.close()
    assert events[:2] == [TokenEvent(id="a", text="x")] * 2
    assert events[2:] == [
        ErrorEvent(id="a", code="internal", message="the runtime failed while generating"),
        ErrorEvent(id="b", code="internal", message="the runtime failed while generating"),
    ]


async def test_a_response_that_never_streamed_still_cancels_its_batch() -> None:
    runner = StaticScheduler(EndlessUnlessFree())
    batch = runner.submit([GenerationRequest(id="a", prompt="x")])

    async def send(message: object) -> None:
        raise OSError("the client is gone")

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnect):
        await BatchResponse(batch)({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert batch.cancellation.batch
    assert runner.cancel(["a"]) == ()
    after = await read_all(runner.submit([GenerationRequest(id="b", prompt="free")]).lines())
    assert finishes(after)["b"].text == "free", "the generation thread is free again"
    runner.close()


ENDLESS = 10**9


def counting(request_id: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(id=request_id, prompt="x", stream=True, params=SamplingParams(max_tokens=max_tokens))


class SteppingEngine:
    """One "x" per open request per step, a finish at ``max_tokens``; honours both kinds of cancellation, as the
    real engines do. Records the ids of each batch it ran and sets ``stepping`` once it generates."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, ...]] = []
        self.stepping = threading.Event()

    @property
    def context_length(self) -> int:
        return ENDLESS

    def load(self) -> LoadReport:
        return LoadReport(0.0, 0, "none", "none")

    def warmup(self) -> None:
        return None

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        self.batches.append(tuple(r.id for r in requests))
        produced = dict.fromkeys((r.id for r in requests), 0)
        running = list(requests)
        while running and not cancellation.batch:
            self.stepping.set()
            for request in running:
                yield self._next(request, produced, cancellation)
            running = [r for r in running if produced[r.id] >= 0]

    @staticmethod
    def _next(request: GenerationRequest, produced: dict[str, int], cancellation: Cancellation) -> BatchEvent:
        if cancellation.request(request.id):
            produced[request.id] = -1
            return cancelled_event(request.id)
        produced[request.id] += 1
        if produced[request.id] < request.params.max_tokens:
            return TokenEvent(id=request.id, text="x")
        usage = Usage(prompt_tokens=1, completion_tokens=produced[request.id], total_tokens=produced[request.id] + 1)
        produced[request.id] = -1
        return FinishEvent(id=request.id, text="x" * usage.completion_tokens, finish_reason="length", usage=usage)


async def read_all(lines: AsyncIterator[bytes]) -> list[BatchEvent]:
    async def read() -> list[BatchEvent]:
        return [BatchEventAdapter.validate_json(line) async for line in lines]

    return await asyncio.wait_for(read(), timeout=30)


async def read_until_token(lines: AsyncIterator[bytes], request_id: str) -> list[BatchEvent]:
    """Events up to and including the first token of ``request_id``."""
    events: list[BatchEvent] = []
    while not tokens_of(events, request_id):
        events.append(BatchEventAdapter.validate_json(await asyncio.wait_for(anext(lines), timeout=30)))
    return events


async def test_cancel_stops_one_request_and_the_rest_of_its_batch_go_on() -> None:
    engine = SteppingEngine()
    runner = StaticScheduler(engine)
    lines = runner.submit([counting("leaves", ENDLESS), counting("stays", 50)]).lines()
    events = await read_until_token(lines, "leaves")
    assert runner.cancel(["leaves", "unknown", "leaves"]) == ("leaves",)
    events += await read_all(lines)
    runner.close()
    assert [e for e in events if e.id == "leaves"][-1] == cancelled_event("leaves")
    assert finishes(events)["stays"].usage.completion_tokens == 50
    assert runner.cancel(["leaves", "stays"]) == (), "both have ended"


async def test_a_queued_request_is_cancelled_at_once_and_never_runs() -> None:
    engine = SteppingEngine()
    runner = StaticScheduler(engine)
    running = runner.submit([counting("long", ENDLESS)]).lines()
    await read_until_token(running, "long")
    queued = runner.submit([counting("q1", 3), counting("q2", 3)]).lines()
    assert runner.cancel(["q1"]) == ("q1",)
    # "long" runs until cancelled, so these answers cannot have waited for the generation thread.
    assert BatchEventAdapter.validate_json(await anext(queued)) == cancelled_event("q1")
    assert runner.cancel(["q2"]) == ("q2",)
    assert await read_all(queued) == [cancelled_event("q2")], "nothing left to run: the stream ends at once"
    assert runner.cancel(["long"]) == ("long",)
    assert (await read_all(running))[-1] == cancelled_event("long")
    assert finishes(await read_all(runner.submit([counting("next", 2)]).lines()))["next"]
    runner.close()
    assert engine.batches == [("long",), ("next",)], "the cancelled batch never reached the engine"


async def test_a_final_event_that_races_the_cancel_becomes_the_cancelled_error() -> None:
    """An engine may finish (or fail) a request in the step during which it is cancelled; the cancel's answer
    promised the ``cancelled`` error, so that is what the stream says."""
    proceed = threading.Event()

    class FinishesAnyway(EndlessEngine):
        def generate(self, requests: Sequence[GenerationRequest], _: Cancellation) -> Iterator[BatchEvent]:
            yield TokenEvent(id="a", text="x")
            assert proceed.wait(timeout=30)
            usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
            yield FinishEvent(id="a", text="x", finish_reason="length", usage=usage)
            raise RuntimeError("device lost")

    runner = StaticScheduler(FinishesAnyway())
    lines = runner.submit([counting("a", 5), counting("b", 5)]).lines()
    await read_until_token(lines, "a")
    assert runner.cancel(["a"]) == ("a",)
    proceed.set()
    assert await read_all(lines) == [
        cancelled_event("a"),
        ErrorEvent(id="b", code="internal", message="the runtime failed while generating"),
    ]
    runner.close()


@pytest.fixture
async def stepping_app() -> AsyncIterator[tuple[SteppingEngine, httpx.AsyncClient]]:
    engine = SteppingEngine()
    app = create_app(SETTINGS, loader=lambda: engine)
    async with app.router.lifespan_context(app):
        await settle(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime") as client:
            yield engine, client


async def test_cancel_over_http(stepping_app: tuple[SteppingEngine, httpx.AsyncClient]) -> None:
    engine, client = stepping_app
    unknown = await client.post(CANCEL_PATH, json={"ids": ["never-seen"]})
    assert (unknown.status_code, CancelResponse.model_validate_json(unknown.content).cancelled) == (200, ())
    requests = [counting("leaves", ENDLESS).model_dump(), counting("stays", 20).model_dump()]
    batch = asyncio.create_task(client.post(BATCH_PATH, json={"model": "echo-model", "requests": requests}))
    assert await wait_thread_event(engine.stepping)
    cancelled = await client.post(CANCEL_PATH, json={"ids": ["leaves", "never-seen"]})
    assert cancelled.json() == {"cancelled": ["leaves"]}
    response = await asyncio.wait_for(batch, timeout=30)
    events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines()]
    assert [e for e in events if e.id == "leaves"][-1] == cancelled_event("leaves")
    assert finishes(events)["stays"].usage.completion_tokens == 20


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"ids": []}', 422),
        (b'{"ids": [""]}', 422),
        (json.dumps({"ids": ["x" * 129]}).encode(), 422),
        (json.dumps({"ids": [f"r{i}" for i in range(MAX_CANCEL_IDS + 1)]}).encode(), 422),
        (b'{"ids": ["a"], "all": true}', 422),
    ],
)
async def test_bad_cancel_bodies_are_refused(
    stepping_app: tuple[SteppingEngine, httpx.AsyncClient], body: bytes, status: int
) -> None:
    _, client = stepping_app
    response = await client.post(CANCEL_PATH, content=body)
    assert response.status_code == status
    ErrorBody.model_validate_json(response.content)


def long_echo(request_id: str, words: int = 200) -> dict[str, object]:
    return {"id": request_id, "prompt": "w " * words, "params": {"max_tokens": words}}


async def test_several_open_batches_share_the_running_batch() -> None:
    app = create_app(SETTINGS, loader=lambda: HoldingEcho(until=2))
    async with app.router.lifespan_context(app):
        readiness = await settle(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime") as client:

            async def post(request_id: str) -> httpx.Response:
                return await client.post(BATCH_PATH, json={"model": "echo-model", "requests": [long_echo(request_id)]})

            first, second = await asyncio.wait_for(asyncio.gather(post("a"), post("b")), timeout=60)
            ready = ReadyBody.model_validate_json((await client.get(READY_PATH)).content)
    for response, request_id in ((first, "a"), (second, "b")):
        events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines()]
        assert finishes(events)[request_id].usage.completion_tokens == 200
    assert sorted([first.headers[FREE_ROWS_HEADER], second.headers[FREE_ROWS_HEADER]]) == ["2", "3"]
    assert isinstance(readiness.runner, ContinuousScheduler) and readiness.runner.high_water.rows == 2
    assert (ready.scheduler, ready.free_rows) == ("continuous", 4)


async def test_the_static_scheduler_reports_no_room_while_it_holds_a_batch() -> None:
    static = dataclasses.replace(SETTINGS, scheduler="static")
    app = create_app(static, loader=EchoEngine)
    async with app.router.lifespan_context(app):
        await settle(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime") as client:
            response = await client.post(BATCH_PATH, json={"model": "echo-model", "requests": [long_echo("a", 50)]})
            assert (response.status_code, response.headers[FREE_ROWS_HEADER]) == (200, "0")
            refused = await client.post(BATCH_PATH, json=batch_body("a", "b", "c", "d", "e"))
            assert (refused.status_code, refused.headers[FREE_ROWS_HEADER]) == (413, "4")
            ready = ReadyBody.model_validate_json((await client.get(READY_PATH)).content)
    assert (ready.scheduler, ready.max_batch_tokens, ready.free_rows) == ("static", 0, 4)


async def test_an_engine_that_cannot_step_runs_batches_one_at_a_time(
    stepping_app: tuple[SteppingEngine, httpx.AsyncClient],
) -> None:
    _, client = stepping_app
    ready = ReadyBody.model_validate_json((await client.get(READY_PATH)).content)
    assert SETTINGS.scheduler == "continuous"
    assert ready.scheduler == "static", "the fallback is reported, not hidden"
