"""The runtime's HTTP face: ``/healthz``, ``/readyz``, ``POST /v1/batch`` and ``POST /v1/cancel`` (see ``wire``).

Start-up order: uvicorn binds the port at once (so ``/healthz`` answers and the process can be probed), while a
background thread resolves the weights into the node-local cache, loads them and warms up; only then does
``/readyz`` answer 200. If that fails the process exits with status 1 so its supervisor notices.

One generation thread runs the model (the accelerator does one forward pass at a time anyway). With the continuous
scheduler (``runtime.scheduler``, the default) the requests of every open ``POST /v1/batch`` join one running
batch between decoding steps; with the static one (``runtime.static``) batches run one at a time. Either way
events travel from that thread to the event loop through an ``asyncio.Queue`` and out as NDJSON lines while the
batch is still running. A client that goes away cancels its batch at the next decoding step; ``POST /v1/cancel``
cancels single requests of a running batch at its next decoding step, and of a queued batch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runtime.batches import Runner, RunningBatch
from runtime.budget import Budget
from runtime.cache import materialise
from runtime.engine import Engine, LoadReport, as_step_engine
from runtime.engines import create_engine
from runtime.errors import EngineError
from runtime.faults import exit_if_triggered
from runtime.scheduler import Scheduler
from runtime.settings import RuntimeSettings
from runtime.static import BatchRunner
from wire import (
    BATCH_PATH,
    CANCEL_PATH,
    FREE_ROWS_HEADER,
    HEALTH_PATH,
    NDJSON,
    READY_PATH,
    BatchRequest,
    CancelRequest,
    CancelResponse,
    ErrorBody,
    ReadyBody,
    StartupTimings,
)

__all__ = [
    "BatchResponse",
    "BatchRunner",
    "Readiness",
    "RunningBatch",
    "Scheduler",
    "create_app",
    "make_runner",
    "prepare_engine",
]

log = logging.getLogger(__name__)

Loader = Callable[[], Engine]
_Body = TypeVar("_Body", bound=BaseModel)


def prepare_engine(settings: RuntimeSettings, on_timings: Callable[[StartupTimings], None] | None = None) -> Engine:
    """Resolve the weights into the cache, load them and warm up; blocking. Logs where the time went, and hands
    the same numbers to ``on_timings`` (for ``/readyz``)."""
    process_s = process_age()
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
    timings = StartupTimings(
        process_s=None if process_s is None else round(process_s, 3),
        cache_s=round(cached - started, 3),
        imports_s=round(imported - cached, 3),
        load_s=round(loaded - imported, 3),
        warmup_s=round(warmed - loaded, 3),
        total_s=round(warmed - started + (process_s or 0.0), 3),
    )
    log.info(
        "engine ready in %.2f s: cache %.2f s, imports %.2f s, load %.2f s, warmup %.2f s (process start to ready %s)",
        warmed - started,
        timings.cache_s,
        timings.imports_s,
        timings.load_s,
        timings.warmup_s,
        "unknown" if process_s is None else f"{timings.total_s:.2f} s",
    )
    if on_timings is not None:
        on_timings(timings)
    return engine


def process_age() -> float | None:
    """Seconds since the operating system started this process (Linux: ``/proc``, 10 ms steps); None elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
            fields = stat.read().rsplit(")", 1)[1].split()
            booted_s = float(uptime.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, booted_s - int(fields[19]) / ticks)  # field 22 of stat(5): starttime, in clock ticks
    except (OSError, ValueError, IndexError):
        return None


def _log_load(report: LoadReport) -> None:
    log.info(
        "loaded %.1f MB of weights on %s as %s in %.2f s (%.1f MB/s)",
        report.bytes_loaded / 1e6,
        report.device,
        report.dtype,
        report.seconds,
        report.bytes_loaded / 1e6 / max(report.seconds, 1e-9),
    )


def make_runner(engine: Engine, settings: RuntimeSettings) -> Runner:
    """The scheduler ``settings`` ask for. An engine that cannot let rows join a running batch (a test double, a
    model whose cache layers cannot be padded) runs batches one at a time, and says so in the log and ``/readyz``."""
    if settings.scheduler == "continuous" and (scheduler := _continuous(engine, settings)) is not None:
        return scheduler
    return BatchRunner(engine, settings.max_batch_size)


def _continuous(engine: Engine, settings: RuntimeSettings) -> Scheduler[Any] | None:
    step_engine = as_step_engine(engine)
    try:
        if step_engine is None:
            raise EngineError(f"{type(engine).__name__} cannot run rows step by step")
        tokens = settings.max_batch_tokens or step_engine.default_batch_tokens()
        scheduler = Scheduler(step_engine, Budget(rows=settings.max_batch_size, tokens=tokens))
    except EngineError as exc:
        log.warning("continuous batching is not possible (%s): running batches one at a time", exc)
        return None
    log.info("continuous batching: up to %d rows and %d KV-cache tokens", settings.max_batch_size, tokens)
    return scheduler


@dataclass
class Readiness:
    """Where start-up stands; ``settled`` is set once the engine is ready (with its runner) or loading has failed."""

    engine: Engine | None = None
    runner: Runner | None = None
    failed: bool = False
    closed: bool = False
    startup: StartupTimings | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        """The app shuts down: end the runner's batches and stop its thread, now or once loading is done."""
        self.closed = True
        if self.runner is not None:
            self.runner.close()


class BatchResponse(StreamingResponse):
    """The NDJSON answer to ``POST /v1/batch``. Closes its batch however the response ends, even if it never
    started streaming (the client left before the first byte), so no batch outlives its stream."""

    def __init__(self, batch: RunningBatch, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(batch.lines(), media_type=NDJSON, headers=headers)
        self._batch = batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._batch.close()


def create_app(
    settings: RuntimeSettings,
    loader: Loader | None = None,
    on_fatal: Callable[[], None] = lambda: None,
) -> Starlette:
    """The ASGI app. ``loader`` makes the ready engine (default: ``prepare_engine(settings)``); ``on_fatal`` is
    called on the event loop if it fails. ``app.state.readiness`` is the app's ``Readiness``."""
    readiness = Readiness()

    def record(timings: StartupTimings) -> None:
        readiness.startup = timings

    load = loader or (lambda: prepare_engine(settings, on_timings=record))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_load_in_background, args=(load, loop, readiness, settings, on_fatal), name="load", daemon=True
        ).start()
        try:
            yield
        finally:
            readiness.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        runner = readiness.runner
        if runner is None:
            return _error(503, "failed to load the model" if readiness.failed else "loading the model")
        body = ReadyBody(
            model=settings.served_names[0],
            max_batch_size=settings.max_batch_size,
            context_length=runner.context_length,
            scheduler=runner.kind,
            max_batch_tokens=runner.max_batch_tokens,
            free_rows=runner.free_rows,
            startup=readiness.startup,
        )
        return JSONResponse(body.model_dump())

    async def batch(request: Request) -> Response:
        runner = readiness.runner
        if runner is None:
            return _error(503, "the model is not loaded yet", {"Retry-After": "1"})
        answer = _batch_answer(runner, await request.body(), settings)
        answer.headers[FREE_ROWS_HEADER] = str(runner.free_rows)  # after taking the batch, if it was taken
        return answer

    async def cancel(request: Request) -> Response:
        parsed = _parse(CancelRequest, await request.body(), "cancel request")
        if isinstance(parsed, Response):
            return parsed
        cancelled = readiness.runner.cancel(parsed.ids) if readiness.runner else ()
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


def _batch_answer(runner: Runner, body: bytes, settings: RuntimeSettings) -> Response:
    """The streaming answer with the batch taken by ``runner``, or why it was refused."""
    parsed = _parse(BatchRequest, body, "batch")
    if isinstance(parsed, Response):
        return parsed
    if parsed.model not in settings.served_names:
        return _error(404, f"this runtime serves {settings.model_name!r}, not {parsed.model!r}")
    if len(parsed.requests) > settings.max_batch_size:
        return _error(413, f"{len(parsed.requests)} requests, more than max_batch_size {settings.max_batch_size}")
    exit_if_triggered(parsed.requests, settings.fault_exit_on)
    return BatchResponse(runner.submit(parsed.requests))


def _load_in_background(
    load: Loader,
    loop: asyncio.AbstractEventLoop,
    readiness: Readiness,
    settings: RuntimeSettings,
    on_fatal: Callable[[], None],
) -> None:
    try:
        engine = load()
        runner = make_runner(engine, settings)
    except Exception:
        log.exception("cannot start serving %s", settings.model_name)

        def fail() -> None:
            readiness.failed = True
            readiness.settled.set()
            on_fatal()

        loop.call_soon_threadsafe(fail)
        return

    def ready() -> None:
        if readiness.closed:  # the app shut down while the model loaded
            runner.close()
            return
        readiness.engine, readiness.runner = engine, runner
        readiness.settled.set()
        log.info("ready: serving %s at %s", settings.model_name, settings.url)

    try:
        loop.call_soon_threadsafe(ready)
    except RuntimeError:  # the event loop is gone: nobody will ever use the runner
        runner.close()


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
