"""Auto-pipelining: calls of one Redis script made in the same turn of the event loop go out in one pipeline.

Requests that arrive together (one read of the listening sockets hands uvicorn several) each enqueue: sent one by
one, that is one write and one read system call each, the largest cost of a request in the gateway's profile
(docs/architecture.md). ``Coalesced`` holds a call until the callbacks that are ready now have run, then sends
every call held so far in one round trip. A lone call waits for nothing but that one turn of the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

#: One script call: its keys and its arguments.
Call = tuple[list[str], list[str | int]]


class Coalesced:
    """``await coalesced(keys, args)``: the reply of one call, sent in a pipeline with the calls made alongside.

    ``run(calls)`` sends them and returns one reply per call, an exception object for a call that failed; an
    exception it raises (the connection failed) is every call's."""

    def __init__(self, run: Callable[[Sequence[Call]], Awaitable[list[object]]]) -> None:
        self._run = run
        self._held: list[tuple[Call, asyncio.Future[object]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: list[str], args: list[str | int]) -> object:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[object] = loop.create_future()
        self._held.append(((keys, args), reply))
        if len(self._held) == 1:
            loop.call_soon(self._send_held)
        return await reply

    def _send_held(self) -> None:
        held, self._held = self._held, []
        task = asyncio.get_running_loop().create_task(self._send(held))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, held: list[tuple[Call, asyncio.Future[object]]]) -> None:
        try:
            replies = await self._run([call for call, _ in held])
        except Exception as exc:
            for _, reply in held:
                if not reply.done():
                    reply.set_exception(exc)
            return
        for (_, reply), value in zip(held, replies, strict=True):
            if reply.done():  # its caller was cancelled; the call was made all the same
                continue
            if isinstance(value, BaseException):
                reply.set_exception(value)
            else:
                reply.set_result(value)
