"""Ready endpoints that say when someone looks them up: proof, without sleeping, that a pool's ``acquire`` found
no room and waits (it looks the ready set up, then waits without another step in between)."""

from __future__ import annotations

import asyncio

from gateway.replicas.endpoints import ReadyEndpoints


class WatchedEndpoints(ReadyEndpoints):
    def __init__(self) -> None:
        super().__init__()
        self._lookups: list[asyncio.Event] = []

    def next_lookup(self) -> asyncio.Event:
        """An event set at the next look-up of the ready set (take it before what should look)."""
        event = asyncio.Event()
        self._lookups.append(event)
        return event

    def get(self, model: str) -> tuple[str, ...]:
        for event in self._lookups:
            event.set()
        self._lookups.clear()
        return super().get(model)


async def looked_up(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    """Wait for ``event`` (from ``next_lookup``), at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        await event.wait()
