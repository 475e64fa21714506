"""How the gateway's HTTP server is run: uvicorn with its HTTP/1.1 protocol, plus the guards uvicorn lacks.

uvicorn times out an idle keep-alive connection, but not a client that connects and never sends, or sends its
headers one byte a second (slowloris), and it buffers headers of any size. ``GuardedProtocol`` adds, while the
headers arrive: a deadline for the whole header block (408, then close), and limits on the number and the total
size of header lines (431, then close) — before anything is buffered past them. It extends uvicorn's httptools
protocol (its callbacks ``on_message_begin``, ``on_header``, ``on_headers_complete``); uvicorn is pinned to the
minor versions a test covers (tests/faults/test_http_guards.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.api.bodies import error_body
from gateway.settings import ServerSettings


def _response(status: bytes, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
    return head % (status, len(body)) + body


_TOO_LARGE = _response(b"431 Request Header Fields Too Large", "Request header fields too large.", "headers_too_large")
_TOO_SLOW = _response(b"408 Request Timeout", "The request headers did not arrive in time.", "request_timeout")


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a header deadline and header limits (class attributes, set by ``protocol_for``)."""

    header_timeout_s = 10.0
    max_header_count = 100
    max_header_bytes = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = False
        self._header_lines = 0
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._start_deadline()  # a client that connects and sends nothing is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_lines = self._header_bytes = 0
        self._start_deadline()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        self._header_bytes += len(name) + len(value)
        if self._header_lines > self.max_header_count or self._header_bytes > self.max_header_bytes:
            self._refuse(_TOO_LARGE)
            raise ValueError("header limits exceeded")  # stops the parser; send_400_response stays silent
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._refuse, _TOO_SLOW)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, response: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._stop_deadline()
        self.transport.write(response)
        self.transport.close()


def protocol_for(server: ServerSettings) -> type[GuardedProtocol]:
    attributes: dict[str, Any] = {
        "header_timeout_s": server.header_timeout_s,
        "max_header_count": server.max_header_count,
        "max_header_bytes": server.max_header_bytes,
    }
    return type("Guarded", (GuardedProtocol,), attributes)


def uvicorn_config(app: ASGIApp, server: ServerSettings, log_level: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=protocol_for(server),
        log_level=log_level or server.log_level.lower(),
        access_log=False,  # the gateway writes its own, with request ids and timings (``gateway.api.requestids``)
        timeout_keep_alive=max(1, round(server.keep_alive_s)),
    )


def quiet_request_logs(server: ServerSettings) -> None:
    """Without ``access_log``, no INFO line per httpx call either (the local backend's probes and claims)."""
    if not server.access_log:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only for such sockets; without it
    # every small response waits ~40 ms for delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(app: ASGIApp, server: ServerSettings) -> None:
    """uvicorn on the API port, and on the metrics port when there is one (one app: ``PortSplit`` tells them
    apart)."""
    ports = [server.port] if server.metrics_port is None else [server.port, server.metrics_port]
    sockets = [listen(server.host, port) for port in ports]
    uvicorn.Server(uvicorn_config(app, server)).run(sockets=sockets)
