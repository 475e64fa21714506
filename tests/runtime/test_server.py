"""The HTTP surface in-process: readiness during loading, request validation, streaming and cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
from starlette.applications import Starlette

from runtime.echo import EchoEngine
from runtime.engine import BatchEvent, Engine, LoadReport
from runtime.server import BatchRunner, Readiness, create_app
from runtime.settings import RuntimeSettings
from wire import (
    BATCH_PATH,
    HEALTH_PATH,
    NDJSON,
    READY_PATH,
    BatchEventAdapter,
    ErrorBody,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    ReadyBody,
    TokenEvent,
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
    await asyncio.wait_for(readiness.settled.wait(), timeout=30)
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
        model="echo-model", max_batch_size=4, context_length=32768
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

    def generate(self, requests: Sequence[GenerationRequest], cancelled: threading.Event) -> Iterator[BatchEvent]:
        try:
            step = 0
            while not cancelled.is_set():
                if self._fail_after is not None and step == self._fail_after:
                    raise RuntimeError("device lost")
                yield TokenEvent(id=requests[0].id, text="x")
                step += 1
        finally:
            self.stopped.set()


async def wait_thread_event(event: threading.Event) -> bool:
    return await asyncio.to_thread(event.wait, 30)


async def test_closing_the_stream_cancels_the_batch() -> None:
    runner, engine = BatchRunner(), EndlessEngine()
    lines = runner.stream(engine, [GenerationRequest(id="a", prompt="x")])
    first = await anext(lines)
    assert BatchEventAdapter.validate_json(first) == TokenEvent(id="a", text="x")
    await lines.aclose()
    assert await wait_thread_event(engine.stopped)
    runner.close()


async def test_engine_failure_becomes_internal_errors_for_unfinished_requests() -> None:
    runner = BatchRunner()
    requests = [GenerationRequest(id="a", prompt="x"), GenerationRequest(id="b", prompt="y")]
    events = [BatchEventAdapter.validate_json(line) async for line in runner.stream(EndlessEngine(2), requests)]
    runner.close()
    assert events[:2] == [TokenEvent(id="a", text="x")] * 2
    assert events[2:] == [
        ErrorEvent(id="a", code="internal", message="the runtime failed while generating"),
        ErrorEvent(id="b", code="internal", message="the runtime failed while generating"),
    ]
