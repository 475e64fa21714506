"""The runtime's HTTP face: ``/healthz``, ``/readyz``, ``POST /v1/batch`` and ``POST /v1/cancel`` (see ``wire``).

Start-up order: uvicorn binds the port at once (so ``/healthz`` answers and the process can be probed), while a
background thread resolves the weights into the node-local cache, loads them and warms up; only then does
``/readyz`` answer 200. If that fails the process exits with status 1 so its supervisor notices.

Batches run one at a time on a single generation thread (the accelerator does one forward pass at a time anyway);
events travel from that thread to the event loop through an ``asyncio.Queue`` and out as NDJSON lines while the
batch is still running. A client that goes away cancels its batch at the next decoding step; ``POST /v1/cancel``
cancels single requests of a running batch at its next decoding step, and of a queued batch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runtime.cache import materialise
from runtime.cancellation import Cancellation, cancelled_event
from runtime.engine import BatchEvent, Engine, LoadReport
from runtime.engines import create_engine
from runtime.faults import exit_if_triggered
from runtime.settings import RuntimeSettings
from wire import (
    BATCH_PATH,
    CANCEL_PATH,
    HEALTH_PATH,
    NDJSON,
    READY_PATH,
    BatchRequest,
    CancelRequest,
    CancelResponse,
    ErrorBody,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    ReadyBody,
    TokenEvent,
)

__all__ = ["BatchResponse", "BatchRunner", "Readiness", "RunningBatch", "create_app", "prepare_engine"]

log = logging.getLogger(__name__)

Loader = Callable[[], Engine]
_EmitItem = BatchEvent | None
_Body = TypeVar("_Body", bound=BaseModel)


def prepare_engine(settings: RuntimeSettings) -> Engine:
    """Resolve the weights into the cache, load them and warm up; blocking. Logs where the time went."""
    started = time.monotonic()
    model_dir = None
    if settings.engine == "torch":
        assert settings.source is not None  # RuntimeSettings checks this for the torch engine
        model_dir = materialise(settings.source, settings.cache_dir).path
    cached = time.monotonic()
    engine = create_engine(settings, model_dir)
    imported = time.monotonic()
    report = engine.load()
    loaded = time.monotonic()
    if settings.warmup:
        engine.warmup()
    warmed = time.monotonic()
    if report.bytes_loaded:
        _log_load(report)
    log.info(
        "engine ready in %.2f s: cache %.2f s, imports %.2f s, load %.2f s, warmup %.2f s",
        warmed - started,
        cached - started,
        imported - cached,
        loaded - imported,
        warmed - loaded,
    )
    return engine


def _log_load(report: LoadReport) -> None:
    log.info(
        "loaded %.1f MB of weights on %s as %s in %.2f s (%.1f MB/s)",
        report.bytes_loaded / 1e6,
        report.device,
        report.dtype,
        report.seconds,
        report.bytes_loaded / 1e6 / max(report.seconds, 1e-9),
    )


@dataclass
class Readiness:
    """Where start-up stands; ``settled`` is set once the engine is ready or loading has failed."""

    engine: Engine | None = None
    failed: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class RunningBatch:
    """One submitted batch as the event loop sees it, from ``POST /v1/batch`` until its stream ends: its events
    so far, and what of it is cancelled. It is registered with its runner all that time, queued or running, so
    ``POST /v1/cancel`` finds its requests as soon as the batch's 200 answer has been sent."""

    cancellation: Cancellation
    _events: asyncio.Queue[_EmitItem]
    _forget: Callable[[RunningBatch], None]

    async def lines(self) -> AsyncGenerator[bytes]:
        """NDJSON lines of the batch's events; stopping early (the client left) cancels the batch."""
        try:
            while (event := await self._events.get()) is not None:
                yield event.model_dump_json().encode() + b"\n"
        finally:
            self.close()

    def cancel(self, request_ids: Iterable[str]) -> tuple[str, ...]:
        """Cancel those of ``request_ids`` this batch holds open; return them."""
        taken = self.cancellation.cancel(request_ids)
        if taken.before_start:  # the generation thread will never see these: end them here, at once
            for request_id in taken.ids:
                self._events.put_nowait(cancelled_event(request_id))
            if taken.ids and not self.cancellation.unsettled():
                self._events.put_nowait(None)  # nothing left to run: end the stream now, not when its turn comes
        return taken.ids

    def close(self) -> None:
        """Cancel whatever still runs and leave the registry; idempotent."""
        self.cancellation.cancel_batch()
        self._forget(self)


@dataclass
class BatchRunner:
    """Runs batches one at a time on a dedicated thread, streams their events to the event loop, and cancels
    single requests of any batch it holds. ``fault_exit_on``: see ``RuntimeSettings.fault_exit_on``."""

    fault_exit_on: str | None = None
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    )
    _batches: set[RunningBatch] = field(default_factory=set)

    def submit(self, engine: Engine, requests: Sequence[GenerationRequest]) -> RunningBatch:
        """Queue the batch on the generation thread; call on the event loop. Its ``lines()`` must be consumed
        or the batch ``close()``d, which is what ``BatchResponse`` guarantees."""
        exit_if_triggered(requests, self.fault_exit_on)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[_EmitItem] = asyncio.Queue()
        batch = RunningBatch(Cancellation(r.id for r in requests), events, self._batches.discard)

        def emit(item: _EmitItem) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                batch.cancellation.cancel_batch()

        # The thread reports everything, failures included, through the queue; its future has nothing to add.
        loop.run_in_executor(self._executor, _run_batch, engine, requests, batch.cancellation, emit)
        self._batches.add(batch)  # before any cancel can run: both happen on the event loop
        return batch

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        """Cancel the named requests in every batch held (queued or running); return those found, each once, in
        the order asked."""
        found: set[str] = set()
        for batch in list(self._batches):
            found.update(batch.cancel(request_ids))
        return tuple(i for i in dict.fromkeys(request_ids) if i in found)

    def close(self) -> None:
        for batch in list(self._batches):
            batch.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class BatchResponse(StreamingResponse):
    """The NDJSON answer to ``POST /v1/batch``. Closes its batch however the response ends, even if it never
    started streaming (the client left before the first byte), so no batch outlives its stream."""

    def __init__(self, batch: RunningBatch) -> None:
        super().__init__(batch.lines(), media_type=NDJSON)
        self._batch = batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._batch.close()


@dataclass
class _Tally:
    """What one batch produced, for its log line."""

    size: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0

    def count(self, event: BatchEvent) -> BatchEvent:
        if isinstance(event, FinishEvent):
            self.prompt_tokens += event.usage.prompt_tokens
            self.completion_tokens += event.usage.completion_tokens
        self.errors += isinstance(event, ErrorEvent) and event.code != "cancelled"
        return event


def _run_batch(
    engine: Engine,
    requests: Sequence[GenerationRequest],
    cancellation: Cancellation,
    emit: Callable[[_EmitItem], None],
) -> None:
    """The generation thread's side: pull events from the engine, hand each to the loop, log the batch. Every
    final event passes ``cancellation.settle``, so a request cancelled while it ran ends as cancelled."""
    started = time.monotonic()
    tally = _Tally(len(requests))
    try:
        to_run = cancellation.start()
        if cancellation.batch or not to_run:
            return
        for event in engine.generate([r for r in requests if r.id in to_run], cancellation):
            emit(tally.count(_settled(event, cancellation)))
    except Exception:
        log.exception("batch of %d failed", len(requests))
        for request_id in cancellation.unsettled():
            failed = ErrorEvent(id=request_id, code="internal", message="the runtime failed while generating")
            emit(tally.count(cancelled_event(request_id) if cancellation.settle(request_id) else failed))
    finally:
        emit(None)
        _log_batch(tally, cancellation, time.monotonic() - started)


def _settled(event: BatchEvent, cancellation: Cancellation) -> BatchEvent:
    """The event to send: a final event of a request cancelled meanwhile becomes its ``cancelled`` error."""
    if isinstance(event, TokenEvent) or not cancellation.settle(event.id):
        return event
    return cancelled_event(event.id)


def _log_batch(tally: _Tally, cancellation: Cancellation, seconds: float) -> None:
    unfinished = cancellation.unsettled() if cancellation.batch else []
    cancelled = f", {cancellation.cancelled_count} cancelled" if cancellation.cancelled_count else ""
    abandoned = f", cancelled with {len(unfinished)} unfinished" if unfinished else ""
    log.info(
        "batch of %d: %d prompt + %d completion tokens in %.3f s (%.1f tokens/s), %d errors%s%s",
        tally.size,
        tally.prompt_tokens,
        tally.completion_tokens,
        seconds,
        tally.completion_tokens / max(seconds, 1e-9),
        tally.errors,
        cancelled,
        abandoned,
    )


def create_app(
    settings: RuntimeSettings,
    loader: Loader | None = None,
    on_fatal: Callable[[], None] = lambda: None,
) -> Starlette:
    """The ASGI app. ``loader`` makes the ready engine (default: ``prepare_engine(settings)``); ``on_fatal`` is
    called on the event loop if it fails. ``app.state.readiness`` is the app's ``Readiness``."""
    readiness = Readiness()
    runner = BatchRunner(fault_exit_on=settings.fault_exit_on)
    load = loader or (lambda: prepare_engine(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_load_in_background, args=(load, loop, readiness, settings, on_fatal), name="load", daemon=True
        ).start()
        try:
            yield
        finally:
            runner.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if readiness.engine is None:
            return _error(503, "failed to load the model" if readiness.failed else "loading the model")
        body = ReadyBody(
            model=settings.served_names[0],
            max_batch_size=settings.max_batch_size,
            context_length=readiness.engine.context_length,
        )
        return JSONResponse(body.model_dump())

    async def batch(request: Request) -> Response:
        engine = readiness.engine
        if engine is None:
            return _error(503, "the model is not loaded yet", {"Retry-After": "1"})
        parsed = _parse(BatchRequest, await request.body(), "batch")
        if isinstance(parsed, Response):
            return parsed
        if parsed.model not in settings.served_names:
            return _error(404, f"this runtime serves {settings.model_name!r}, not {parsed.model!r}")
        if len(parsed.requests) > settings.max_batch_size:
            return _error(413, f"{len(parsed.requests)} requests, more than max_batch_size {settings.max_batch_size}")
        return BatchResponse(runner.submit(engine, parsed.requests))

    async def cancel(request: Request) -> Response:
        parsed = _parse(CancelRequest, await request.body(), "cancel request")
        if isinstance(parsed, Response):
            return parsed
        cancelled = runner.cancel(parsed.ids)
        if cancelled:
            log.info("cancelled %d of %d requests asked for: %s", len(cancelled), len(parsed.ids), ", ".join(cancelled))
        return JSONResponse(CancelResponse(cancelled=cancelled).model_dump())

    routes = [
        Route(HEALTH_PATH, healthz, methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
        Route(BATCH_PATH, batch, methods=["POST"]),
        Route(CANCEL_PATH, cancel, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.readiness = readiness
    return app


def _load_in_background(
    load: Loader,
    loop: asyncio.AbstractEventLoop,
    readiness: Readiness,
    settings: RuntimeSettings,
    on_fatal: Callable[[], None],
) -> None:
    try:
        engine = load()
    except Exception:
        log.exception("cannot start serving %s", settings.model_name)

        def fail() -> None:
            readiness.failed = True
            readiness.settled.set()
            on_fatal()

        loop.call_soon_threadsafe(fail)
        return

    def ready() -> None:
        readiness.engine = engine
        readiness.settled.set()
        log.info("ready: serving %s at %s", settings.model_name, settings.url)

    loop.call_soon_threadsafe(ready)


def _parse(model: type[_Body], body: bytes, what: str) -> _Body | Response:
    """The body as ``model``, or the 400 (not JSON) or 422 (not a valid ``what``) answer."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        if any(p["type"] == "json_invalid" for p in problems):
            return _error(400, "the body is not valid JSON")
        summary = "; ".join(f"{'.'.join(str(part) for part in p['loc']) or 'body'}: {p['msg']}" for p in problems[:5])
        return _error(422, f"invalid {what}: {summary}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status, headers=headers)
