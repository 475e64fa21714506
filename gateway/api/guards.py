"""ASGI guards in front of the routes: which port serves what (``PortSplit``), and ``refuse``, their answer.
(Header limits and deadlines are the HTTP protocol's job: see ``gateway.api.serving``.)

Each is a plain ASGI middleware that answers a request it refuses before the app sees it, in OpenAI's error
shape, so that nothing behind it (body parsing, the queue, a scale-up) runs for such a request.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.bodies import error_body

#: The operational endpoints: served on ``KALTSTART_METRICS_PORT`` alone when it is set.
OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


async def refuse(
    send: Send, status: int, message: str, code: str, headers: Collection[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


class PortSplit:
    """With a metrics port: the operational endpoints only there, the API only on the other port(s)."""

    def __init__(self, app: ASGIApp, metrics_port: int | None) -> None:
        self._app = app
        self._metrics_port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._metrics_port is not None:
            server = scope.get("server") or ("", None)
            on_metrics_port = server[1] == self._metrics_port
            if on_metrics_port != (scope["path"] in OPS_PATHS):
                await refuse(send, 404, "Not found.", "not_found")
                return
        await self._app(scope, receive, send)
