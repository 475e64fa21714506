"""API errors, rendered as the ``Status`` objects a real kube-apiserver sends.

Every failure the double reports is an ``ApiError``; the HTTP layer turns it into a ``Status`` body with the
same ``code``, so ``kubernetes_asyncio`` raises ``ApiException`` with the right ``.status`` and a body the
leader-election code (which reads ``json.loads(body)["code"]``) understands.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """A request the double refuses, with the HTTP code and ``Status.reason`` a real server would use."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": rt.group, "kind": rt.plural}


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified_name} "{name}" not found', details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'{rt.qualified_name} "{name}" already exists', "AlreadyExists", details=_details(rt, name))


def conflict(rt: ResourceType, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {rt.qualified_name} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, message, "Conflict", details=_details(rt, name))


def invalid(rt: ResourceType, name: str, problems: list[str]) -> ApiError:
    message = f'{rt.kind} "{name}" is invalid: ' + "; ".join(problems)
    return ApiError(422, message, "Invalid", details=_details(rt, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


def expired(resource_version: int, oldest: int) -> ApiError:
    message = f"too old resource version: {resource_version} ({oldest})"
    return ApiError(410, message, "Expired")


def status_for(code: int, message: str | None = None, reason: str | None = None) -> ApiError:
    """An arbitrary failure, for fault injection."""
    reason = reason or REASONS.get(code, "Unknown")
    return ApiError(code, message or f"injected failure: {reason}", reason)
