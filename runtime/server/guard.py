"""What the runtime checks before its handlers act on a request: the token shared with the gateway on its API
(``TokenGuard``), and the size of a body (``read_body``).

The runtime trusts whoever may call it: a batch names any request, a claim picks the model. The token makes that
the gateway alone, not whatever else reaches the port (another pod, another local user). ``/healthz`` and
``/readyz`` stay open: a kubelet's probes cannot carry a secret, and they tell nothing a caller could abuse.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from wire import HEALTH_PATH, READY_PATH, ErrorBody

__all__ = ["BodyTooLarge", "TokenGuard", "read_body"]

#: Paths served without the token.
OPEN_PATHS = frozenset({HEALTH_PATH, READY_PATH})


class BodyTooLarge(Exception):
    """A request body over the limit (said by its Content-Length, or found while reading it)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes (nothing more is
    read then)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body has {declared} bytes, more than the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
    return bytes(body)


class TokenGuard:
    """ASGI middleware: with a ``token``, every path but ``OPEN_PATHS`` needs ``Authorization: Bearer <token>``
    (compared in constant time), else 401 before the body is read."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        if not hmac.compare_digest(_bearer(scope), self._token):
            body = ErrorBody(error="missing or wrong token: send 'Authorization: Bearer <token>'").model_dump()
            refusal = JSONResponse(body, status_code=401, headers={"www-authenticate": 'Bearer realm="runtime"'})
            await refusal(scope, receive, send)
            return
        await self._app(scope, receive, send)


def _bearer(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""
