"""List, then watch; when the watch breaks or answers 410 Gone, list again.

A consumer (``Handler``) is told of each watch event as the one object it changed (``changed``), and of each
list as the whole set (``replaced``), never a half-built view: a re-list builds a new snapshot and hands it over
in one step. An event costs the consumer work for that object only, however many there are. ``synced`` is set
once the first list has been applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger("kaltstart.kubernetes")

Object = dict[str, Any]
#: (namespace, name)
Key = tuple[str, str]
Snapshot = dict[Key, Object]
ListFunc = Callable[..., Awaitable[Any]]

#: A server-side watch timeout, so that a silently dead connection is noticed at the latest this often.
WATCH_TIMEOUT_S = 240
#: Back-off after a failed list (the API server may be down); doubles up to the maximum.
RETRY_S = (0.5, 10.0)


def key_of(obj: Object) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class Handler(Protocol):
    def replaced(self, objects: Snapshot) -> None:
        """A list: the whole current set, replacing everything seen before."""
        ...

    def changed(self, key: Key, obj: Object | None) -> None:
        """A watch event: ``obj`` added or modified, or (None) deleted."""
        ...


class Informer:
    def __init__(self, what: str, list_func: ListFunc, handler: Handler, **list_kwargs: Any) -> None:
        self._what = what
        self._list = list_func
        self._kwargs = list_kwargs
        self._handler = handler
        self.synced = asyncio.Event()

    async def run(self) -> None:
        backoff = RETRY_S[0]
        while True:
            try:
                version = await self._relist()
                backoff = RETRY_S[0]
                while True:
                    version = await self._watch(version)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: watch expired (410 Gone); listing again", self._what)
                    continue
                log.warning("%s: API error %s %s; listing again in %.1f s", self._what, exc.status, exc.reason, backoff)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("%s: connection lost (%r); listing again in %.1f s", self._what, exc, backoff)
            await asyncio.sleep(backoff)  # back off from a failing API server before listing again
            backoff = min(backoff * 2, RETRY_S[1])

    async def _request(self, read_timeout_s: float, **extra: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self._list(
            **self._kwargs, **extra, _preload_content=False, _request_timeout=(10, read_timeout_s)
        )
        return response

    async def _relist(self) -> str:
        response = await self._request(60)
        body = json.loads(await response.read())
        self._handler.replaced({key_of(item): item for item in body.get("items") or []})
        self.synced.set()
        version: str = (body.get("metadata") or {}).get("resourceVersion", "")
        return version

    async def _watch(self, version: str) -> str:
        """Apply watch events from ``version`` until the server ends the stream; return the last version."""
        response = await self._request(
            WATCH_TIMEOUT_S + 30,
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_S,
            allow_watch_bookmarks=True,
        )
        try:
            async for line in response.content:
                if line.strip():
                    version = self._apply(json.loads(line)) or version
        finally:
            response.release()
        return version

    def _apply(self, event: dict[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=obj.get("code", 500), reason=obj.get("reason", "watch error"))
        version: str | None = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return version
        self._handler.changed(key_of(obj), None if kind == "DELETED" else obj)
        return version
