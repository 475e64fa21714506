"""The HTTP face of the double: kube-apiserver paths, verbs, list/watch responses and Status errors."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import apply, errors, openapi, ownership, resources, scale
from .errors import ApiError
from .faults import RecordedRequest, RequestHooks
from .patches import APPLY_PATCH, apply_patch
from .resources import ResourceType
from .selection import FieldSelector, LabelSelector
from .store import Store, WatchScope
from .watches import StreamEnd, WatchAborted, Watcher, WatchEvent

PodLogs = Callable[[str, str], str | None]
_WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_COLLECTION_VERBS = frozenset({"list", "watch", "create", "deletecollection"})
_OBJECT_VERBS = frozenset({"get", "update", "patch", "delete"})
_SUBRESOURCE_VERBS = {"status": frozenset({"get", "update", "patch"}), "log": frozenset({"get"})}
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Target:
    """What a resource path names: a collection, one object, or one object's subresource."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def resource(self) -> str:
        return f"{self.rt.plural}/{self.subresource}" if self.subresource else self.rt.plural

    def verb(self, method: str, query: dict[str, str]) -> str:
        """The API verb of a request to this path; 405 for a method the path does not take."""
        if method == "GET" and self.name is None:
            verb = "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        elif method == "DELETE" and self.name is None:
            verb = "deletecollection"
        else:
            verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if self.subresource is not None:
            allowed = _SUBRESOURCE_VERBS.get(self.subresource, _SUBRESOURCE_VERBS["status"])
        else:
            allowed = _OBJECT_VERBS if self.name is not None else _COLLECTION_VERBS
        if verb not in allowed:
            raise ApiError(405, f"{method} is not supported on {self.resource}", "MethodNotAllowed")
        return verb


Handler = Callable[[Target, dict[str, str], Any, str], Response]


def parse_target(group: str, version: str, rest: str) -> Target:
    parts = [part for part in rest.split("/") if part]
    namespace: str | None = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    rt = resources.lookup(group, version, parts[0]) if parts else None
    if rt is None or len(parts) > 3 or (rt.namespaced and namespace is None and len(parts) > 1):
        raise ApiError(404, f"the server could not find the requested resource ({rest})", "NotFound")
    name = parts[1] if len(parts) > 1 else None
    subresource = parts[2] if len(parts) > 2 else None
    if subresource is not None and subresource not in rt.subresources:
        raise ApiError(404, f"the server could not find the requested resource ({rest})", "NotFound")
    return Target(rt, namespace, name, subresource)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", maxsplit=1)[0].strip().lower()


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.to_status(), status_code=error.code)


def _success_status(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    details = {"name": metadata["name"], "group": rt.group, "kind": rt.plural, "uid": metadata["uid"]}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _encode_continue(obj: dict[str, Any]) -> str:
    position = [obj["metadata"].get("namespace", ""), obj["metadata"]["name"]]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError as exc:
        raise errors.bad_request("invalid continue token") from exc
    return str(namespace), str(name)


class ApiApp:
    """Routes requests to the store; ``build()`` returns the ASGI application."""

    def __init__(
        self,
        store: Store,
        hooks: RequestHooks,
        pod_logs: PodLogs,
        server_address: Callable[[], str],
    ) -> None:
        self.store = store
        self.hooks = hooks
        self._pod_logs = pod_logs
        self._server_address = server_address
        #: The field manager of the request being dispatched (set right before the synchronous dispatch).
        self._manager = "unknown"

    def build(self, extra_routes: list[BaseRoute], token: str | None) -> ASGIApp:
        routes: list[BaseRoute] = [
            Route("/version", self._version),
            Route("/api", self._core_versions),
            Route("/api/{version}", self._core_resources),
            Route("/apis", self._groups),
            Route("/apis/{group}", self._group),
            Route("/apis/{group}/{version}", self._group_resources),
            Route("/api/{version}/{rest:path}", self._resource, methods=_ALL_METHODS),
            Route("/apis/{group}/{version}/{rest:path}", self._resource, methods=_ALL_METHODS),
            Route("/openapi/v3", self._openapi_index),
            Route("/openapi/v3/{path:path}", self._openapi_document),
            Mount("/_double", routes=extra_routes),
        ]
        return BearerTokenGate(Starlette(routes=routes), token)

    # -- discovery -----------------------------------------------------------------------------------------

    async def _version(self, request: Request) -> Response:
        return JSONResponse(resources.SERVER_VERSION)

    async def _core_versions(self, request: Request) -> Response:
        return JSONResponse(resources.core_versions(self._server_address()))

    async def _core_resources(self, request: Request) -> Response:
        return self._discovery(resources.resource_list("", request.path_params["version"]))

    async def _groups(self, request: Request) -> Response:
        return JSONResponse(resources.group_list())

    async def _group(self, request: Request) -> Response:
        return self._discovery(resources.group(request.path_params["group"]))

    async def _group_resources(self, request: Request) -> Response:
        params = request.path_params
        return self._discovery(resources.resource_list(params["group"], params["version"]))

    async def _openapi_index(self, request: Request) -> Response:
        return JSONResponse(openapi.index())

    async def _openapi_document(self, request: Request) -> Response:
        return self._discovery(openapi.document(request.path_params["path"]))

    @staticmethod
    def _discovery(document: dict[str, Any] | None) -> Response:
        if document is None:
            return _error_response(ApiError(404, "the server could not find the requested resource"))
        return JSONResponse(document)

    # -- resources -----------------------------------------------------------------------------------------

    async def _resource(self, request: Request) -> Response:
        params = request.path_params
        if not params["rest"].strip("/"):  # "/apis/apps/v1/" is discovery, as without the slash
            return self._discovery(resources.resource_list(params.get("group", ""), params["version"]))
        query = dict(request.query_params)
        try:
            target = parse_target(params.get("group", ""), params["version"], params["rest"])
            verb = target.verb(request.method, query)
            body = await self._read_body(request)
            content_type = request.headers.get("content-type")
            record = RecordedRequest(
                verb, target.resource, target.namespace, target.name, request.method,
                request.url.path, query, content_type, body,
            )  # fmt: skip
            if verb == "watch":
                return self._watch(target, query, record)
            self.hooks.admit(record)
            self._manager = ownership.manager_of(query, request.headers.get("user-agent"))
            return self._dispatch(target, verb, query, body, content_type or "application/json")
        except ApiError as error:
            return _error_response(error)

    @staticmethod
    async def _read_body(request: Request) -> Any:
        if request.method not in _WRITE_METHODS:
            return None
        raw = await request.body()
        if not raw:
            return None
        if _media_type(request.headers.get("content-type")) == APPLY_PATCH:
            return apply.parse_body(raw)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request(f"the request body is not JSON: {exc}") from exc

    def _dispatch(self, target: Target, verb: str, query: dict[str, str], body: Any, content_type: str) -> Response:
        if "dryRun" in query:
            raise errors.bad_request("dryRun is not supported by the Kubernetes API double")
        if target.subresource == "scale":
            return JSONResponse(self._scale(target, verb, body, content_type))
        if target.subresource == "log":
            return self._log(target)
        handlers: dict[str, Handler] = {
            "get": self._get,
            "list": self._list,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
            "delete": self._delete,
            "deletecollection": self._deletecollection,
        }
        return handlers[verb](target, query, body, content_type)

    def _scale(self, target: Target, verb: str, body: Any, content_type: str) -> dict[str, Any]:
        namespace, name = target.namespace or "", target.name or ""
        if verb == "get":
            return scale.read_scale(self.store, namespace, name)
        if verb == "update":
            return scale.replace_scale(self.store, namespace, name, self._object_body(body), self._manager)
        return scale.patch_scale(self.store, namespace, name, content_type, body, self._manager)

    def _log(self, target: Target) -> Response:
        self.store.get(target.rt, target.namespace or "", target.name or "")
        text = self._pod_logs(target.namespace or "", target.name or "")
        if text is None:
            message = f'container in pod "{target.name}" is waiting to start'
            raise errors.bad_request(message)
        return PlainTextResponse(text)

    @staticmethod
    def _object_body(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        return body

    def _get(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        return JSONResponse(self.store.get(target.rt, target.namespace or "", target.name or ""))

    def _create(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        body = self._object_body(body)
        ownership.record_update(target.rt, None, body, self._manager)
        created = self.store.create(target.rt, target.namespace or "", body)
        return JSONResponse(created, status_code=201)

    def _update(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        status = target.subresource == "status"
        namespace, name = target.namespace or "", target.name or ""
        body = self._object_body(body)
        if not status:
            ownership.record_update(target.rt, self.store.get(target.rt, namespace, name), body, self._manager)
        return JSONResponse(self.store.replace(target.rt, namespace, name, body, status))

    def _patch(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        status = target.subresource == "status"
        namespace, name = target.namespace or "", target.name or ""
        if _media_type(content_type) == APPLY_PATCH:
            body = self._object_body(body)
            applied, created = apply.server_side_apply(self.store, target.rt, namespace, name, body, query, status)
            return JSONResponse(applied, status_code=201 if created else 200)
        current = self.store.get(target.rt, namespace, name)
        patched = apply_patch(current, content_type, body)
        if not status:
            ownership.record_update(target.rt, current, patched, self._manager)
        return JSONResponse(self.store.replace(target.rt, namespace, name, patched, status))

    def _delete(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        preconditions = (body or {}).get("preconditions") if isinstance(body, dict) else None
        gone = self.store.delete(target.rt, target.namespace or "", target.name or "", preconditions)
        return JSONResponse(gone if target.rt == resources.PODS else _success_status(target.rt, gone))

    def _deletecollection(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        items = self.store.list(target.rt, target.namespace, *self._selectors(target, query))
        gone = [self.store.delete(target.rt, target.namespace or "", item["metadata"]["name"]) for item in items]
        return JSONResponse(self._list_document(target.rt, gone))

    def _list(self, target: Target, query: dict[str, str], body: Any, content_type: str) -> Response:
        items = self.store.list(target.rt, target.namespace, *self._selectors(target, query))
        if "continue" in query:
            start = _decode_continue(query["continue"])
            items = [i for i in items if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > start]
        document = self._list_document(target.rt, items)
        limit = int(query.get("limit") or 0)
        if 0 < limit < len(items):
            document["items"] = document["items"][:limit]
            document["metadata"]["continue"] = _encode_continue(items[limit - 1])
            document["metadata"]["remainingItemCount"] = len(items) - limit
        return JSONResponse(document)

    def _list_document(self, rt: ResourceType, items: list[dict[str, Any]]) -> dict[str, Any]:
        for item in items:  # a real server leaves kind and apiVersion off list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": items,
        }

    @staticmethod
    def _selectors(target: Target, query: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
        labels = LabelSelector.parse(query.get("labelSelector"))
        return labels, FieldSelector.parse(query.get("fieldSelector"), target.rt)

    # -- watch ---------------------------------------------------------------------------------------------

    def _watch(self, target: Target, query: dict[str, str], record: RecordedRequest) -> Response:
        try:
            self.hooks.admit(record)
            scope = WatchScope(target.rt, target.namespace, *self._selectors(target, query))
            watcher = self.store.watch(scope, query.get("resourceVersion"))
        except ApiError as error:
            if error.code != 410:
                raise
            return StreamingResponse(_one_event(WatchEvent("ERROR", error.to_status())), media_type="application/json")
        timeout_s = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        stream = _stream(self.store, watcher, timeout_s)
        return StreamingResponse(stream, media_type="application/json")


async def _one_event(event: WatchEvent) -> AsyncIterator[bytes]:
    yield event.line()


async def _stream(store: Store, watcher: Watcher, timeout_s: float | None) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s if timeout_s is not None else None
    try:
        while True:
            remaining = deadline - loop.time() if deadline is not None else None
            try:
                item = await asyncio.wait_for(watcher.next(), remaining)
            except TimeoutError:
                return
            if item is StreamEnd.CLEAN:
                return
            if item is StreamEnd.ABRUPT:
                raise WatchAborted
            yield item.line()
    finally:
        store.unwatch(watcher)


class BearerTokenGate:
    """Authentication only (no authorization): API requests must carry the kubeconfig's bearer token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._expected and not scope["path"].startswith("/_double"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != self._expected:
                response = _error_response(ApiError(401, "Unauthorized"))
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


class DropWatchAborts(logging.Filter):
    """Keeps the log free of the tracebacks that ``break_watches(abrupt=True)`` causes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, WatchAborted)
