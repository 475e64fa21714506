"""Server-sent events shared by both kinds of model: the ``data:`` framing, the cold-start progress comments, and
closing a request's tickets even from a handler that is being cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio

from gateway.api.admission import Admission


class Waiting(Protocol):
    """A request's tickets, as the progress comments and the handler's end need them."""

    async def dispatched(self) -> None: ...

    async def close(self) -> None: ...


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data`` as compact JSON (or as it is, if text)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def waits_comment(queue_ms: float | None, cold_start_ms: float | None) -> bytes:
    """The SSE comment that tells a stream whose headers went out before its dispatch how long it waited (the
    values of ``x-kaltstart-queue-ms`` and ``x-kaltstart-cold-start-ms`` on other responses)."""
    return f": kaltstart: queue-ms={queue_ms or 0:.0f} cold-start-ms={cold_start_ms or 0:.0f}\n\n".encode()


async def closed(waiting: Waiting) -> None:
    """Close a request's tickets even from a handler that is being cancelled: their cancellation must reach Redis
    (and the replica), or a replica goes on generating for nobody."""
    with anyio.CancelScope(shield=True):
        await waiting.close()


async def progress(gateway: Admission, waiting: Waiting, model: str, started: float) -> AsyncIterator[bytes]:
    """SSE comments (``: ...``, which clients ignore) while the request waits for a replica: one at once, then one
    every ``cold_start_progress_s``, until it is dispatched. Raises the request's error if it never is."""
    dispatched = asyncio.ensure_future(waiting.dispatched())
    try:
        while True:
            waited = time.monotonic() - started
            yield f": {gateway.cold_starts.progress(model, waited)}\n\n".encode()
            done, _ = await asyncio.wait({dispatched}, timeout=gateway.settings.cold_start_progress_s)
            if done:
                dispatched.result()
                return
    finally:
        if not dispatched.done():
            dispatched.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatched
