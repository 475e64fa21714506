"""Requests for a model whose replicas are an OpenAI-compatible server (``protocol = openai``): forwarded as sent.

The gateway checks only what it must: the key may use the model, the body fits the size and nesting bounds
(``gateway.api.bounds``), ``model`` names it, ``stream`` (if given) is a boolean, and ``stream_options`` an
object. Every other field goes to the upstream untouched (vLLM's ``guided_json``, ``chat_template_kwargs``, ...),
since the upstream decides what it honours; ``model`` is rewritten to the name the upstream serves
(``upstream-model``), and the client's name is put back into every answer.

The answer is the upstream's: its JSON body and status (a 4xx refusal passed through; a body that is not an OpenAI
error is wrapped into one), or its server-sent events as they come, ending with ``data: [DONE]``. A stream that
meets a cold start gets progress comments first, as for our runtime's models.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, Protocol, TypeVar

from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.api.admission import Admission, Ticket
from gateway.api.auth import Grant
from gateway.api.bodies import error_body
from gateway.api.events import closed, progress, sse
from gateway.errors import ClientGone, InvalidRequest, RequestError
from gateway.queue.upstream import UPSTREAM_PATHS, UpstreamRequest
from gateway.relay.messages import Answered, Chunk
from gateway.settings import ModelSettings

T = TypeVar("T")
_SSE_HEADERS = {"cache-control": "no-cache"}


class Watch(Protocol):
    """The client's connection (``routes.ClientWatch``)."""

    async def unless_gone(self, work: Awaitable[T]) -> T: ...


def forwarded_body(model: ModelSettings, body: dict[str, Any]) -> tuple[str, bool]:
    """The body to send upstream (JSON text, ``model`` rewritten) and whether it streams; 400 for the few fields the
    gateway itself relies on."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("Invalid value for 'stream': must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("Invalid value for 'stream_options': must be an object.", param="stream_options")
    return json.dumps(body | {"model": model.served_name}, ensure_ascii=False, separators=(",", ":")), stream


async def forward(
    gateway: Admission,
    client: Watch,
    kind: Literal["completion", "chat"],
    body: dict[str, Any],
    started: float,
    grant: Grant,
) -> Response:
    """Queue the request for the model's upstream, then answer with what the upstream answered."""
    model = gateway.catalog.get(body["model"])
    text, stream = forwarded_body(model, body)
    prefix = "cmpl" if kind == "completion" else "chatcmpl"
    request = UpstreamRequest(id=f"{prefix}-{uuid.uuid4().hex}", path=UPSTREAM_PATHS[kind], body=text, stream=stream)
    cold = gateway.cold_starts.is_cold(model.name)
    ticket = await gateway.submit_upstream(model.name, request, grant)
    rename = _Renamer(model)
    if stream and cold and gateway.settings.cold_start_progress_s > 0:
        events = _events(gateway, ticket, rename, started, cold_start=True)
        return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
    try:
        await client.unless_gone(ticket.dispatched())
        replies = ticket.relayed()
        first = await client.unless_gone(anext(replies))
    except BaseException:
        await closed(ticket)
        raise
    if isinstance(first, Answered):  # not streamed, or refused before a stream began
        await closed(ticket)
        gateway.record(model.name, first.status, time.monotonic() - started)
        return _answer(first, rename)
    events = _events(gateway, ticket, rename, started, first=first, replies=replies)
    return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)


async def _events(
    gateway: Admission,
    ticket: Ticket,
    rename: _Renamer,
    started: float,
    *,
    cold_start: bool = False,
    first: Chunk | None = None,
    replies: AsyncIterator[Chunk | Answered] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body: the upstream's events, each as it came (the model name put back), then ``[DONE]``. A refusal
    or failure after the headers went out is an error event."""
    status = ClientGone.status_code
    model = ticket.model.name
    begun = False
    try:
        if cold_start:
            async for comment in progress(gateway, ticket, model, started):
                yield comment
        replies = replies or ticket.relayed()
        pending: list[Chunk | Answered] = [first] if first is not None else []
        async for reply in _chained(pending, replies):
            if isinstance(reply, Chunk):
                if not begun:
                    gateway.record_first_token(model, time.monotonic() - started)
                    begun = True
                for data in reply.data:
                    yield sse(rename.event(data))
                continue
            status = reply.status
            if reply.status != 200:
                yield sse(_error(reply))
    except RequestError as exc:
        status = exc.status_code
        gateway.record_cancellation(model, exc)
        yield sse(error_body(exc.message, exc.error_type, exc.param, exc.code))
    finally:
        await closed(ticket)
        gateway.record(model, status, time.monotonic() - started)
        if status == ClientGone.status_code:
            gateway.record_cancellation(model, ClientGone())
    yield sse("[DONE]")


Relayed = Chunk | Answered


async def _chained(first: list[Relayed], rest: AsyncIterator[Relayed]) -> AsyncIterator[Relayed]:
    for reply in first:
        yield reply
    async for reply in rest:
        yield reply


def _answer(reply: Answered, rename: _Renamer) -> Response:
    if reply.status != 200:
        return JSONResponse(_error(reply), status_code=reply.status)
    return Response(rename.body(reply.body), status_code=200, media_type="application/json")


def _error(reply: Answered) -> dict[str, Any]:
    """The upstream's refusal as an OpenAI error body: its own if it is one, else its message wrapped."""
    try:
        parsed = json.loads(reply.body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    fallback = reply.body[:500] or f"The model's server answered {reply.status}."
    message = detail if isinstance(detail, str) else fallback
    return error_body(message, "invalid_request_error" if reply.status < 500 else "server_error", None, None)


class _Renamer:
    """Puts the client's model name back where the upstream wrote its own (only when they differ)."""

    def __init__(self, model: ModelSettings) -> None:
        self._name = model.name
        self._differs = model.served_name != model.name

    def event(self, data: str) -> str:
        return self.body(data) if self._differs else data

    def body(self, text: str) -> str:
        if not self._differs:
            return text
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, dict) and "model" in parsed:
            parsed["model"] = self._name
            return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
        return text
