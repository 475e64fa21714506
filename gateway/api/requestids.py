"""Request ids: every HTTP request gets one, every response says it, every log line about it names it.

A client's ``X-Request-Id`` is taken when it is 1 to ``MAX_REQUEST_ID_CHARS`` characters of ``[A-Za-z0-9._:@+=/-]``
(a UUID, a ULID, a trace id, an id a proxy made up); otherwise one is generated (32 hex digits). It is the id the
response's ``x-request-id`` header returns, on every response this app sends (errors and server-sent events too),
the ``request_id`` of every log line about the request (``gateway.logs``), and it travels with the request through
the queue into the runtime's batch and log lines. It is a label, not a key: two requests may carry the same one,
so the gateway's own ids (``chatcmpl-...``, one per choice: ``<id>-<index>``) stay what identifies a request in
Redis and in the response body.

With ``KALTSTART_ACCESS_LOG`` this middleware writes the access log: one line per request once its response ended,
with its status, duration, request id and, for a generation, its queue wait and cold-start wait
(``x-kaltstart-queue-ms``, ``x-kaltstart-cold-start-ms``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass

from opentelemetry.trace import StatusCode
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import wire
from gateway.logs import REQUEST_ID
from gateway.tracing import OFF, Tracing
from gateway.tracing import REQUEST_ID as REQUEST_ID_ATTRIBUTE

REQUEST_ID_HEADER = "x-request-id"
QUEUE_MS_HEADER = "x-kaltstart-queue-ms"
COLD_START_MS_HEADER = "x-kaltstart-cold-start-ms"
#: Longest client request id taken (as many as the wire's ``GenerationRequest.request_id`` allows).
MAX_REQUEST_ID_CHARS = wire.MAX_REQUEST_ID_LENGTH
_VALID = re.compile(wire.REQUEST_ID_PATTERN)

access_log = logging.getLogger("kaltstart.access")


def request_id_from(raw: str | bytes | None) -> str:
    """The client's id if it is a valid one, else a new one."""
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if raw is not None and len(raw) <= MAX_REQUEST_ID_CHARS and _VALID.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    """What one HTTP request's access log line and timing headers say: its id, and for a generation how long it
    waited in the queue and, of that, for a cold start (milliseconds; None: not known, or not a generation)."""

    id: str
    queue_ms: float | None = None
    cold_start_ms: float | None = None

    def timing_headers(self) -> dict[str, str]:
        headers = {}
        if self.queue_ms is not None:
            headers[QUEUE_MS_HEADER] = f"{self.queue_ms:.0f}"
        if self.cold_start_ms is not None:
            headers[COLD_START_MS_HEADER] = f"{self.cold_start_ms:.0f}"
        return headers


def record_of(request: Request) -> RequestRecord:
    """The request's record (a new one, generated id, for an app run without ``RequestIds``: unit tests)."""
    record = request.scope.get("state", {}).get(_STATE_KEY)
    return record if isinstance(record, RequestRecord) else RequestRecord(request_id_from(None))


_STATE_KEY = "kaltstart_request"


class RequestIds:
    """The outermost middleware: assigns the request's id, sets ``gateway.logs.REQUEST_ID`` while the request is
    handled, adds ``x-request-id`` to its response, and writes the access log line (``access``)."""

    def __init__(self, app: ASGIApp, *, access: bool = False, tracing: Tracing = OFF) -> None:
        self.app = app
        self._access = access
        self._tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        record = RequestRecord(request_id_from(raw))
        scope.setdefault("state", {})[_STATE_KEY] = record
        header = (b"x-request-id", record.id.encode())
        status = 500
        started = time.monotonic()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(record.id)
        try:
            if self._tracing.enabled and scope["path"].startswith("/v1/"):
                with self._tracing.server_span(*_server_span(scope, record)) as span:
                    try:
                        await self.app(scope, receive, send_with_id)
                    finally:
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            span.set_status(StatusCode.ERROR)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if self._access:
                _log_access(scope, record, status, time.monotonic() - started)
            REQUEST_ID.reset(token)


def _server_span(scope: Scope, record: RequestRecord) -> tuple[str, dict[str, str], dict[str, str]]:
    """The HTTP request's span: its name, the trace context the client sent, its attributes."""
    carrier = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate")
    }
    attributes = {"http.request.method": scope["method"], "url.path": scope["path"], REQUEST_ID_ATTRIBUTE: record.id}
    return f"{scope['method']} {scope['path']}", carrier, attributes


def _log_access(scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
    client = scope.get("client")
    timings = {"queue_ms": record.queue_ms, "cold_start_ms": record.cold_start_ms}
    shown = "".join(f" {name}={value:.0f}" for name, value in timings.items() if value is not None)
    access_log.info(
        "%s %s %s %d %.1f ms%s",
        f"{client[0]}:{client[1]}" if client else "-",
        scope["method"],
        scope["path"],
        status,
        seconds * 1000,
        shown,
        extra={
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            **{name: round(value) for name, value in timings.items() if value is not None},
        },
    )
