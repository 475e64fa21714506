"""The runtime's HTTP face: ``/healthz``, ``/readyz``, ``POST /v1/batch``, ``POST /v1/cancel``, on a standby
runtime ``POST /v1/claim``, and on a pool runtime ``POST /v1/pool/park`` and ``POST /v1/pool/unload`` (see ``wire``).

Start-up order: uvicorn binds the port at once (so ``/healthz`` answers and the process can be probed), while a
background thread (``runtime.server.startup``) resolves the weights into the node-local cache, loads them and warms up;
only then does ``/readyz`` answer 200. If that fails the process exits with status 1 so its supervisor notices.
With ``--announce-to`` the replica also announces each step, and its readiness, on Redis (``runtime.server.announce``).

One generation thread runs the model (the accelerator does one forward pass at a time anyway). With the continuous
scheduler (``runtime.scheduling.continuous``, the default) the requests of every open ``POST /v1/batch`` join one
running
batch between decoding steps; with the static one (``runtime.scheduling.static``) batches run one at a time. Either way
events travel from that thread to the event loop through an ``asyncio.Queue`` and out as NDJSON lines while the
batch is still running. A client that goes away cancels its batch at the next decoding step; ``POST /v1/cancel``
cancels single requests of a running batch at its next decoding step, and of a queued batch at once.

With a token (``KALTSTART_RUNTIME_TOKEN``) every route but ``/healthz`` and ``/readyz`` needs it (401 without);
a body over ``max_body_bytes`` gets 413 before it is read whole (``runtime.server.guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runtime import tracing
from runtime.errors import EngineError, ModelBusy, PoolBusy, SettingsError
from runtime.pool.models import ModelPool
from runtime.scheduling.batches import Runner, RunningBatch
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.scheduling.static import StaticScheduler
from runtime.server.announce import Announcer
from runtime.server.faults import exit_if_triggered
from runtime.server.guard import BodyTooLarge, TokenGuard, read_body
from runtime.server.startup import AlreadyClaimed, Loader, Readiness, make_runner, prepare_engine, start_in_background
from runtime.settings import RuntimeSettings
from wire import (
    BATCH_PATH,
    CANCEL_PATH,
    CLAIM_PATH,
    FREE_ROWS_HEADER,
    HEALTH_PATH,
    NDJSON,
    POOL_PARK_PATH,
    POOL_UNLOAD_PATH,
    READY_PATH,
    BatchRequest,
    CancelRequest,
    CancelResponse,
    ClaimRequest,
    ErrorBody,
    ModelState,
    PoolMoveRequest,
    PoolMoveResponse,
    Residency,
    adapters_header,
)

__all__ = [
    "BatchResponse",
    "ContinuousScheduler",
    "Readiness",
    "RunningBatch",
    "StaticScheduler",
    "create_app",
    "make_runner",
    "prepare_engine",
]

log = logging.getLogger(__name__)

_Body = TypeVar("_Body", bound=BaseModel)


class BatchResponse(StreamingResponse):
    """The NDJSON answer to ``POST /v1/batch``. Closes its batch however the response ends, even if it never
    started streaming (the client left before the first byte), so no batch outlives its stream."""

    def __init__(
        self,
        batch: RunningBatch,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(batch.lines(), media_type=NDJSON, headers=headers)
        self._batch = batch
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._batch.close()
            self._on_close()


def create_app(
    settings: RuntimeSettings,
    loader: Loader | None = None,
    on_fatal: Callable[[], None] = lambda: None,
) -> Starlette:
    """The ASGI app. ``loader`` makes the ready engine (default: ``prepare_engine``); ``on_fatal`` is called on
    the event loop if it fails. ``app.state.readiness`` is the app's ``Readiness``."""
    readiness = Readiness(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        announcer = _announcer(readiness)
        if announcer is not None:
            readiness.on_change = announcer.nudge
            announcer.start()
        start_in_background(readiness, asyncio.get_running_loop(), loader, on_fatal)
        try:
            yield
        finally:
            readiness.close()
            if announcer is not None:
                await announcer.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        body = readiness.ready_body()
        if body is None:
            return _error(503, _not_ready(readiness))
        return JSONResponse(body.model_dump())

    async def body(request: Request) -> bytes | Response:
        try:
            return await read_body(request, readiness.settings.max_body_bytes)
        except BodyTooLarge as exc:
            return _error(413, str(exc))

    async def batch(request: Request) -> Response:
        if readiness.runner is None and readiness.pool is None:
            return _error(503, "the model is not loaded yet", {"Retry-After": "1"})
        received = await body(request)
        if isinstance(received, Response):
            return received
        answer = await _batch_answer(readiness, received)
        answer.headers[FREE_ROWS_HEADER] = str(_free_rows(readiness))  # after taking the batch, if it was taken
        if readiness.pool is not None:  # where its models are now, for the gateway's routing (``wire.Residency``)
            answer.headers.update(Residency.of(readiness.pool.report()).headers())
        if readiness.serves_adapters():  # the LoRA adapters loaded now, for the same routing
            answer.headers.update(adapters_header(readiness.loaded_adapters()))
        return answer

    async def cancel(request: Request) -> Response:
        received = await body(request)
        if isinstance(received, Response):
            return received
        parsed = _parse(CancelRequest, received, "cancel request")
        if isinstance(parsed, Response):
            return parsed
        holder = readiness.runner or readiness.pool
        cancelled = holder.cancel(parsed.ids) if holder else ()
        if cancelled:
            log.info("cancelled %d of %d requests asked for: %s", len(cancelled), len(parsed.ids), ", ".join(cancelled))
        return JSONResponse(CancelResponse(cancelled=cancelled).model_dump())

    async def claim(request: Request) -> Response:
        received = await body(request)
        return received if isinstance(received, Response) else _claim(readiness, received)

    def pool_move(to: ModelState) -> Callable[[Request], Awaitable[Response]]:
        async def move(request: Request) -> Response:
            received = await body(request)
            return received if isinstance(received, Response) else await _pool_move(readiness.pool, received, to)

        return move

    routes = [
        Route(HEALTH_PATH, healthz, methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
        Route(BATCH_PATH, batch, methods=["POST"]),
        Route(CANCEL_PATH, cancel, methods=["POST"]),
        Route(CLAIM_PATH, claim, methods=["POST"]),
        Route(POOL_PARK_PATH, pool_move("parked"), methods=["POST"]),
        Route(POOL_UNLOAD_PATH, pool_move("absent"), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(TokenGuard, token=settings.token)])
    app.state.readiness = readiness
    return app


def _announcer(readiness: Readiness) -> Announcer | None:
    settings = readiness.settings
    if not settings.announce_to:
        return None
    url, interval_s = settings.public_url, settings.announce_interval_s
    return Announcer(settings.announce_to, lambda: readiness.announcement(url, interval_s), interval_s)


def _not_ready(readiness: Readiness) -> str:
    if readiness.failed:
        return "failed to load the model"
    if readiness.phase == "standby":
        return "standby: waiting for a claim (POST /v1/claim)"
    return f"starting: {readiness.phase or 'process'}"


def _claim(readiness: Readiness, body: bytes) -> Response:
    """A standby runtime takes its model: the flags it would have been started with, on its own host and port."""
    parsed = _parse(ClaimRequest, body, "claim")
    if isinstance(parsed, Response):
        return parsed
    own = readiness.settings
    try:
        settings = RuntimeSettings.from_args([*parsed.args, "--host", own.host, "--port", str(own.port)], os.environ)
        if settings.standby:
            raise SettingsError("a claim cannot ask for --standby")
        readiness.claim(settings)
    except SettingsError as exc:
        return _error(422, f"invalid claim: {exc}")
    except AlreadyClaimed:
        return _error(409, "this runtime is not a standby, or was claimed already")
    log.info("claimed for %s (%s)", settings.model_name, settings.source or settings.engine)
    return JSONResponse({"model": settings.model_name}, status_code=202)


def _batch_request(body: bytes, settings: RuntimeSettings) -> BatchRequest | Response:
    """The batch, or why it is refused: not one (400, 422), not a model served here (404), too large (413)."""
    parsed = _parse(BatchRequest, body, "batch")
    if isinstance(parsed, Response):
        return parsed
    if parsed.model not in settings.served_names:
        return _error(404, f"this runtime serves {settings.model_name!r}, not {parsed.model!r}")
    if len(parsed.requests) > settings.max_batch_size:
        return _error(413, f"{len(parsed.requests)} requests, more than max_batch_size {settings.max_batch_size}")
    return parsed


async def _batch_answer(readiness: Readiness, body: bytes) -> Response:
    """The streaming answer with the batch taken by its model's runner, or why it was refused."""
    parsed = _batch_request(body, readiness.settings)
    if isinstance(parsed, Response):
        return parsed
    runner = readiness.runner or await _pool_runner(readiness.pool, parsed.model)
    if isinstance(runner, Response):
        return runner
    exit_if_triggered(parsed.requests, readiness.settings.fault_exit_on)
    released = readiness.pool.released if readiness.pool is not None else lambda: None
    batch = runner.submit(parsed.requests)  # no await since runner_for
    spans = tracing.spans_for(parsed.model, parsed.requests)
    if spans is None:
        return BatchResponse(batch, on_close=released)
    batch.observer = spans.saw

    def on_close() -> None:
        spans.close()
        released()

    return BatchResponse(batch, on_close=on_close)


def _free_rows(readiness: Readiness) -> int:
    if readiness.runner is not None:
        return readiness.runner.free_rows
    ready = readiness.ready_body(with_pool=False)
    return ready.free_rows if ready is not None else 0


async def _pool_runner(pool: ModelPool | None, model: str) -> Runner | Response:
    """The runner of ``model``, made active in the pool, or 503 + ``Retry-After`` if it cannot be now."""
    assert pool is not None
    try:
        return await pool.runner_for(model)
    except PoolBusy as exc:
        log.warning("batch for %s refused: %s", model, exc)
        return _error(503, f"model {model} is waiting for room in this pool", {"Retry-After": "1"})
    except EngineError:
        log.exception("cannot make %s active", model)
        return _error(503, f"model {model} cannot be loaded", {"Retry-After": "5"})


async def _pool_move(pool: ModelPool | None, body: bytes, to: ModelState) -> Response:
    """Park or unload a pool's model on the gateway's word: 200 with where it is now (and the residency headers),
    409 while it is busy (never moved then), 404 for a model not served here or a runtime that is not a pool."""
    parsed = _parse(PoolMoveRequest, body, "pool move")
    if isinstance(parsed, Response):
        return parsed
    if pool is None or parsed.model not in pool.names:
        return _error(404, f"this runtime has no pool model {parsed.model!r}")
    try:
        state = await pool.set_aside(parsed.model, to)
    except ModelBusy as exc:
        return _error(409, str(exc))
    answer = PoolMoveResponse(model=parsed.model, state=state)
    return JSONResponse(answer.model_dump(), headers=Residency.of(pool.report()).headers())


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
