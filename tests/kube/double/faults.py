"""Test hooks on the request path: injected failures, and a log of the requests the double served."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, status_for

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
_VERB_ALIASES = {"replace": "update", "read": "get", "put": "update", "post": "create"}


@dataclass(frozen=True)
class RecordedRequest:
    """One API request, as a real server's audit log would name it."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # plural, with "/subresource" when there is one: "deployments/scale"
    namespace: str | None
    name: str | None
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None = None
    body: Any = None


@dataclass
class Fault:
    verb: str
    resource: str
    error: ApiError
    times: int
    name: str | None = None

    def matches(self, request: RecordedRequest) -> bool:
        return (
            self.verb in ("*", request.verb)
            and self.resource in ("*", request.resource)
            and self.name in (None, request.name)
        )


def normalize_verb(verb: str) -> str:
    verb = _VERB_ALIASES.get(verb.lower(), verb.lower())
    if verb != "*" and verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r}; expected one of {VERBS} or '*'")
    return verb


@dataclass
class RequestHooks:
    """Injected faults, consumed by the requests they match, and a bounded log of served requests."""

    log_size: int = 10_000
    faults: list[Fault] = field(default_factory=list)
    requests: deque[RecordedRequest] = field(init=False)

    def __post_init__(self) -> None:
        self.requests = deque(maxlen=self.log_size)

    def fail_next(
        self,
        verb: str,
        resource: str,
        status: int = 409,
        times: int = 1,
        *,
        name: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        error = status_for(status, message, reason)
        self.faults.append(Fault(normalize_verb(verb), resource, error, times, name))

    def admit(self, request: RecordedRequest) -> None:
        """Record the request, and raise the first injected fault it matches."""
        self.requests.append(request)
        for fault in self.faults:
            if fault.matches(request):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                raise fault.error

    def matching(self, verb: str, resource: str, name: str | None = None) -> list[RecordedRequest]:
        verb = normalize_verb(verb)
        probe = Fault(verb, resource, status_for(500), 1, name)
        return [request for request in self.requests if probe.matches(request)]
