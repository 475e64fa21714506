"""Watch streams: the events one watch will send, queued until the HTTP response writes them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import WatchScope


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK or ERROR
    object: dict[str, Any]

    def line(self) -> bytes:
        return json.dumps({"type": self.type, "object": self.object}, separators=(",", ":")).encode() + b"\n"


class StreamEnd(Enum):
    """Why a watch stream stops: a clean end of the response, or a connection torn down mid-stream."""

    CLEAN = "clean"
    ABRUPT = "abrupt"


class WatchAborted(Exception):
    """Raised inside a watch response to make the HTTP server drop the connection without finishing it."""


class Watcher:
    def __init__(self, scope: WatchScope, internal: bool = False) -> None:
        self.scope = scope
        self.internal = internal  # the double's own controllers: not an HTTP stream, not broken by tests
        self._queue: asyncio.Queue[WatchEvent | StreamEnd] = asyncio.Queue()

    def push(self, event: WatchEvent) -> None:
        self._queue.put_nowait(event)

    def close(self, abrupt: bool = False) -> None:
        self._queue.put_nowait(StreamEnd.ABRUPT if abrupt else StreamEnd.CLEAN)

    async def next(self) -> WatchEvent | StreamEnd:
        return await self._queue.get()
