"""The test hooks over HTTP, under ``/_double/``, for a double running in another process.

POST JSON bodies:
- ``/_double/fail-next``      ``{"verb": "patch", "resource": "deployments/scale", "status": 409, "times": 1}``
- ``/_double/expire-history`` ``{}``
- ``/_double/break-watches``  ``{"abrupt": false}``
- ``/_double/kill-pod``       ``{"name": "...", "namespace": "default"}``
- ``/_double/hold-pending``   ``{"deployment": "...", "seconds": 5.0, "namespace": null}`` (no seconds: until release)
- ``/_double/release``        ``{"deployment": "...", "namespace": null}``
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from .server import ApiDouble

Hook = Callable[[dict[str, Any]], Any]


def _route(path: str, hook: Hook) -> Route:
    async def endpoint(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        try:
            result = hook(body)
        except (LookupError, ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"result": result})

    handler: Callable[[Request], Awaitable[Response]] = endpoint
    return Route(path, handler, methods=["POST"])


def control_routes(api: ApiDouble) -> list[BaseRoute]:
    def fail_next(body: dict[str, Any]) -> None:
        api.fail_next(body["verb"], body["resource"], int(body.get("status", 409)), int(body.get("times", 1)))

    def hold_pending(body: dict[str, Any]) -> None:
        seconds = body.get("seconds")
        api.kubelet.hold_pending(body["deployment"], float(seconds) if seconds else None, body.get("namespace"))

    return [
        _route("/fail-next", fail_next),
        _route("/expire-history", lambda body: api.expire_history()),
        _route("/break-watches", lambda body: api.break_watches(bool(body.get("abrupt", False)))),
        _route("/kill-pod", lambda body: api.kubelet.kill_pod(body["name"], body.get("namespace"))),
        _route("/hold-pending", hold_pending),
        _route("/release", lambda body: api.kubelet.release(body["deployment"], body.get("namespace"))),
    ]
