"""HTTP routes: the OpenAI-compatible API plus health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import wire
from gateway.api.admission import Admission, Delta
from gateway.api.auth import Grant, allowed_models
from gateway.api.bodies import ResponseShape, error_body
from gateway.api.bounds import check_depth, decode_body
from gateway.api.choices import Choices, fan_out, submit
from gateway.api.events import closed, progress, sse, waits_comment
from gateway.api.requestids import REQUEST_ID_HEADER, RequestRecord, record_of
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest, parse_request
from gateway.api.upstream import forward
from gateway.errors import BodyTimeout, ClientGone, ModelNotFound, PayloadTooLarge, RequestError

log = logging.getLogger("kaltstart.http")

T = TypeVar("T")


def _gateway(request: Request) -> Admission:
    gateway: Admission = request.app.state.gateway
    return gateway


async def _read_json(request: Request, limit: int, timeout_s: float) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    except TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} s.") from None
    return decode_body(bytes(body))


async def completions(request: Request) -> Response:
    return await _generate(request, "completion", CompletionRequest)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat", ChatCompletionRequest)


async def _generate(
    request: Request,
    kind: Literal["completion", "chat"],
    schema: type[CompletionRequest] | type[ChatCompletionRequest],
) -> Response:
    gateway = _gateway(request)
    started = time.monotonic()
    model = ""
    try:
        body = await _read_json(request, gateway.settings.max_body_bytes, gateway.settings.body_timeout_s)
        upstream = _upstream_model(gateway, body)
        parsed = None if upstream else parse_request(schema, body)
        model = upstream or (parsed.model if parsed else "")
        grant = allowed_models(request.scope)
        if not grant.allows(model):
            raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        async with ClientWatch(request) as client:
            if parsed is None:
                check_depth(body)
                return await forward(gateway, client, kind, body, started, grant)
            return await _serve(gateway, client, kind, parsed, started, grant, record_of(request))
    except RequestError as exc:
        gateway.record(model, exc.status_code, time.monotonic() - started)
        gateway.record_cancellation(model, exc)
        raise


def _upstream_model(gateway: Admission, body: Any) -> str:
    """The model ``body`` names, if it is one whose replicas speak OpenAI's API (its body is forwarded as it is,
    ``gateway.api.upstream``); else "" (the body is validated field by field for our runtime)."""
    name = body.get("model") if isinstance(body, dict) else None
    if isinstance(name, str) and gateway.catalog.has(name) and gateway.catalog.get(name).forwards:
        return name
    return ""


class ClientWatch:
    """Notices a client that closes its connection while its request waits (queued, in a cold start, or being
    generated): Starlette does not cancel a handler for that. Its body must have been read already; from then
    on the server's ``receive`` returns only when the client is gone."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self._watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ClientWatch:
        self._watch = asyncio.create_task(self._until_gone())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watch is not None and not self._watch.done():
            self._watch.cancel()

    async def _until_gone(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def unless_gone(self, work: Awaitable[T]) -> T:
        """``await work``, unless the client goes away first: then ``work`` is cancelled and ``ClientGone``
        raised."""
        assert self._watch is not None
        task = asyncio.ensure_future(work)
        await asyncio.wait({task, self._watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone()


async def _serve(
    gateway: Admission,
    client: ClientWatch,
    kind: Literal["completion", "chat"],
    parsed: CompletionRequest | ChatCompletionRequest,
    started: float,
    grant: Grant,
    record: RequestRecord,
) -> Response:
    request_id = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"
    default_max = 16 if kind == "completion" else gateway.settings.default_max_tokens
    shape = ResponseShape(
        kind=kind, request_id=request_id, model=parsed.model, logprobs=parsed.logprobs_wanted() is not None
    )
    traceparent = gateway.tracing.traceparent()
    requests = fan_out(parsed, request_id, default_max, client_id=record.id, traceparent=traceparent)
    cold = gateway.cold_starts.is_cold(parsed.model)
    choices = await submit(gateway, parsed.model, requests, parsed.choices_per_prompt, grant)
    if parsed.streaming and cold and gateway.settings.cold_start_progress_s > 0:
        events = _server_sent_events(gateway, choices, shape, parsed.include_usage, started, cold_start=record)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    try:
        await client.unless_gone(choices.dispatched())
    except BaseException:
        await closed(choices)
        raise
    record.queue_ms, record.cold_start_ms = choices.waited_ms()
    if parsed.streaming:
        events = _server_sent_events(gateway, choices, shape, parsed.include_usage, started)
        headers = {"cache-control": "no-cache", **record.timing_headers()}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        results = await client.unless_gone(choices.results())
    finally:
        await closed(choices)
    gateway.record(parsed.model, 200, time.monotonic() - started)
    return JSONResponse(shape.final(results, choices.usage(results)), headers=record.timing_headers())


async def _server_sent_events(
    gateway: Admission,
    choices: Choices,
    shape: ResponseShape,
    include_usage: bool,
    started: float,
    *,
    cold_start: RequestRecord | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body: each choice's chunks, tagged with its index, as they come. A client that leaves mid-stream has
    the generator cancelled (Starlette listens for the disconnect while it streams): the request is then cancelled
    and counted as 499, never as 200. With ``cold_start`` (the request's record) the request has not been
    dispatched yet: progress comments come first (``events.progress``), then, its headers being gone, its waits
    as one more comment (``: kaltstart: queue-ms=... cold-start-ms=...``)."""
    begun: set[int] = set()
    results: dict[int, wire.FinishEvent] = {}
    status = ClientGone.status_code
    try:
        if cold_start is not None:
            async for comment in progress(gateway, choices, shape.model, started):
                yield comment
            cold_start.queue_ms, cold_start.cold_start_ms = choices.waited_ms()
            yield waits_comment(cold_start.queue_ms, cold_start.cold_start_ms)
        async for index, item in choices.stream():
            if isinstance(item, Delta):
                if not begun:
                    gateway.record_first_token(shape.model, time.monotonic() - started)
                chunk = shape.chunk(
                    index, item.text, item.logprobs, first=index not in begun, tool_calls=item.tool_calls
                )
                yield sse(chunk)
                begun.add(index)
                continue
            results[index] = item
            yield sse(shape.chunk(index, "", finish_reason=item.finish_reason, first=index not in begun))
            begun.add(index)
        if include_usage:
            yield sse(shape.usage_chunk(choices.usage([results[i] for i in sorted(results)])))
        status = 200
    except RequestError as exc:
        status = exc.status_code
        log.warning("stream for %s ended with %d: %s", choices.id, status, exc.message)
        gateway.record_cancellation(shape.model, exc)
        yield sse(error_body(exc.message, exc.error_type, exc.param, exc.code))
    finally:
        await closed(choices)
        gateway.record(shape.model, status, time.monotonic() - started)
        if status == ClientGone.status_code:
            gateway.record_cancellation(shape.model, ClientGone())
    yield sse("[DONE]")


async def list_models(request: Request) -> Response:
    gateway, grant = _gateway(request), allowed_models(request.scope)
    data = [_model_card(gateway, m.name) for m in gateway.catalog.all() if grant.allows(m.name)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    gateway = _gateway(request)
    name = request.path_params["model"]
    if not allowed_models(request.scope).allows(name):
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    gateway.catalog.get(name)
    return JSONResponse(_model_card(gateway, name))


def _model_card(gateway: Admission, name: str) -> dict[str, Any]:
    """OpenAI's model object; a LoRA adapter names its base in ``parent``, as OpenAI's fine-tunes do."""
    card = {"id": name, "object": "model", "created": gateway.catalog.created(name), "owned_by": "kaltstart"}
    adapter = gateway.catalog.get(name).adapter
    return card if adapter is None else card | {"parent": adapter.base}


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    problem = await _gateway(request).readiness_problem()
    if problem:
        return PlainTextResponse(problem, status_code=503)
    return PlainTextResponse("ready")


async def metrics(request: Request) -> Response:
    body = await _gateway(request).render_metrics()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def error_response(request: Request, exc: Exception) -> Response:
    """Renders every error in OpenAI's shape. Internals never reach the client; the log has them."""
    if isinstance(exc, RequestError):
        headers = {"retry-after": str(exc.retry_after_s)} if exc.retry_after_s else None
        body = error_body(exc.message, exc.error_type, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)
    if isinstance(exc, HTTPException):
        body = error_body(str(exc.detail), "invalid_request_error", None, None)
        return JSONResponse(body, status_code=exc.status_code)
    # Rendered outside ``RequestIds`` (Starlette's outermost ServerErrorMiddleware): the id is added here.
    request_id = record_of(request).id
    log.exception(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc, extra={"request_id": request_id}
    )
    body = error_body("Internal server error.", "server_error", None, None)
    return JSONResponse(body, status_code=500, headers={REQUEST_ID_HEADER: request_id})


routes = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
