"""HTTP routes: the OpenAI-compatible API plus health, readiness and metrics."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import InvalidRequest, PayloadTooLarge, RequestError
from gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseShape,
    error_body,
    parse_request,
)
from gateway.service import Gateway, Ticket

log = logging.getLogger("kaltstart.http")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None


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
        body = await _read_json(request, gateway.settings.max_body_bytes)
        parsed = parse_request(schema, body)
        model = parsed.model
        return await _serve(gateway, kind, parsed, started)
    except RequestError as exc:
        gateway.record(model, exc.status_code, time.monotonic() - started)
        raise


async def _serve(
    gateway: Gateway,
    kind: Literal["completion", "chat"],
    parsed: CompletionRequest | ChatCompletionRequest,
    started: float,
) -> Response:
    request_id = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"
    default_max = 16 if kind == "completion" else gateway.settings.default_max_tokens
    shape = ResponseShape(kind, request_id, parsed.model)
    ticket = await gateway.submit(parsed.model, parsed.to_wire(request_id, default_max))
    try:
        await ticket.dispatched()
    except BaseException:
        await ticket.close()
        raise
    if parsed.stream:
        events = _server_sent_events(gateway, ticket, shape, parsed.include_usage, started)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    try:
        result = await ticket.result()
    finally:
        await ticket.close()
    gateway.record(parsed.model, 200, time.monotonic() - started)
    return JSONResponse(shape.final(result))


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def _server_sent_events(
    gateway: Gateway, ticket: Ticket, shape: ResponseShape, include_usage: bool, started: float
) -> AsyncIterator[bytes]:
    first = True
    status = 200
    try:
        async for item in ticket.stream():
            if isinstance(item, str):
                if first:
                    gateway.record_first_token(shape.model, time.monotonic() - started)
                yield _sse(shape.chunk(item, first=first))
                first = False
                continue
            yield _sse(shape.chunk("", finish_reason=item.finish_reason, first=first))
            if include_usage:
                yield _sse(shape.usage_chunk(item.usage))
    except RequestError as exc:
        status = exc.status_code
        log.warning("stream for %s ended with %d: %s", ticket.id, status, exc.message)
        yield _sse(error_body(exc.message, exc.error_type, exc.param, exc.code))
    finally:
        await ticket.close()
        gateway.record(shape.model, status, time.monotonic() - started)
    yield _sse("[DONE]")


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    data = [_model_card(gateway, m.name) for m in gateway.catalog.all()]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    gateway = _gateway(request)
    name = request.path_params["model"]
    gateway.catalog.get(name)
    return JSONResponse(_model_card(gateway, name))


def _model_card(gateway: Gateway, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": gateway.catalog.created(name), "owned_by": "kaltstart"}


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
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("Internal server error.", "server_error", None, None), status_code=500)


routes = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
