"""The runtime's HTTP face: ``/healthz``, ``/readyz`` and ``POST /v1/batch`` (see ``wire`` for the contract).

Start-up order: uvicorn binds the port at once (so ``/healthz`` answers and the process can be probed), while a
background thread resolves the weights into the node-local cache, loads them and warms up; only then does
``/readyz`` answer 200. If that fails the process exits with status 1 so its supervisor notices.

Batches run one at a time on a single generation thread (the accelerator does one forward pass at a time anyway);
events travel from that thread to the event loop through an ``asyncio.Queue`` and out as NDJSON lines while the
batch is still running. A client that goes away cancels its batch at the next decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runtime.cache import materialise
from runtime.engine import BatchEvent, Engine, LoadReport
from runtime.engines import create_engine
from runtime.settings import RuntimeSettings
from wire import (
    BATCH_PATH,
    HEALTH_PATH,
    NDJSON,
    READY_PATH,
    BatchRequest,
    ErrorBody,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    ReadyBody,
    TokenEvent,
)

__all__ = ["BatchRunner", "Readiness", "create_app", "prepare_engine"]

log = logging.getLogger(__name__)

Loader = Callable[[], Engine]
_EmitItem = BatchEvent | None


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


@dataclass
class BatchRunner:
    """Runs batches one at a time on a dedicated thread and streams their events to the event loop."""

    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    )
    _running: set[threading.Event] = field(default_factory=set)

    async def stream(self, engine: Engine, requests: Sequence[GenerationRequest]) -> AsyncGenerator[bytes]:
        """NDJSON lines of the batch's events; closing the iterator early cancels the batch."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_EmitItem] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: _EmitItem) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                cancelled.set()

        self._running.add(cancelled)
        # The thread reports everything, failures included, through the queue; its future has nothing to add.
        loop.run_in_executor(self._executor, _run_batch, engine, requests, cancelled, emit)
        try:
            while (event := await queue.get()) is not None:
                yield event.model_dump_json().encode() + b"\n"
        finally:
            cancelled.set()
            self._running.discard(cancelled)

    def close(self) -> None:
        for cancelled in list(self._running):
            cancelled.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run_batch(
    engine: Engine,
    requests: Sequence[GenerationRequest],
    cancelled: threading.Event,
    emit: Callable[[_EmitItem], None],
) -> None:
    """The generation thread's side: pull events from the engine, hand each to the loop, log the batch."""
    started = time.monotonic()
    open_ids = {r.id for r in requests}
    prompt_tokens = completion_tokens = errors = 0
    try:
        if cancelled.is_set():
            return
        for event in engine.generate(requests, cancelled):
            emit(event)
            if isinstance(event, FinishEvent):
                prompt_tokens += event.usage.prompt_tokens
                completion_tokens += event.usage.completion_tokens
            errors += isinstance(event, ErrorEvent)
            if not isinstance(event, TokenEvent):
                open_ids.discard(event.id)
    except Exception:
        log.exception("batch of %d failed", len(requests))
        for request_id in sorted(open_ids):
            emit(ErrorEvent(id=request_id, code="internal", message="the runtime failed while generating"))
        open_ids.clear()
    finally:
        emit(None)
        _log_batch(len(requests), prompt_tokens, completion_tokens, errors, time.monotonic() - started, open_ids)


def _log_batch(size: int, prompt: int, completion: int, errors: int, seconds: float, unfinished: set[str]) -> None:
    outcome = f", cancelled with {len(unfinished)} unfinished" if unfinished else ""
    log.info(
        "batch of %d: %d prompt + %d completion tokens in %.3f s (%.1f tokens/s), %d errors%s",
        size,
        prompt,
        completion,
        seconds,
        completion / max(seconds, 1e-9),
        errors,
        outcome,
    )


def create_app(
    settings: RuntimeSettings,
    loader: Loader | None = None,
    on_fatal: Callable[[], None] = lambda: None,
) -> Starlette:
    """The ASGI app. ``loader`` makes the ready engine (default: ``prepare_engine(settings)``); ``on_fatal`` is
    called on the event loop if it fails. ``app.state.readiness`` is the app's ``Readiness``."""
    readiness = Readiness()
    runner = BatchRunner()
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
        parsed = _parse_batch(await request.body())
        if isinstance(parsed, Response):
            return parsed
        if parsed.model not in settings.served_names:
            return _error(404, f"this runtime serves {settings.model_name!r}, not {parsed.model!r}")
        if len(parsed.requests) > settings.max_batch_size:
            return _error(413, f"{len(parsed.requests)} requests, more than max_batch_size {settings.max_batch_size}")
        return StreamingResponse(runner.stream(engine, parsed.requests), media_type=NDJSON)

    routes = [
        Route(HEALTH_PATH, healthz, methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
        Route(BATCH_PATH, batch, methods=["POST"]),
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


def _parse_batch(body: bytes) -> BatchRequest | Response:
    try:
        return BatchRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        if any(p["type"] == "json_invalid" for p in problems):
            return _error(400, "the body is not valid JSON")
        summary = "; ".join(f"{'.'.join(str(part) for part in p['loc']) or 'body'}: {p['msg']}" for p in problems[:5])
        return _error(422, f"invalid batch: {summary}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status, headers=headers)
