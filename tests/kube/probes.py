"""Test-side probes on a running gateway, for waiting on an event instead of sleeping: they subscribe to the
autoscaler's passes (``Scaler.subscribe_ticks``) and to requests that start waiting at a scale-down fence
(``FencedDoor.subscribe``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.queue.fence import FencedDoor
from gateway.scaling.autoscaler import Scaler


class ScalerTicks:
    """Counts the autoscaler's passes."""

    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler

    async def wait(self, count: int, timeout_s: float, counting: Callable[[], bool] = lambda: True) -> None:
        """Wait until ``count`` more passes have ended while ``counting()`` held (checked as each ends): proof
        that the autoscaler had its chance to act in that state."""
        done = 0
        reached = asyncio.Event()

        def ticked() -> None:
            nonlocal done
            if counting():
                done += 1
                if done >= count:
                    reached.set()

        unsubscribe = self._scaler.subscribe_ticks(ticked)
        try:
            async with asyncio.timeout(timeout_s):
                await reached.wait()
        finally:
            unsubscribe()


class FencedRequests:
    """Announces requests that found their model's fence up, from now on."""

    def __init__(self, door: FencedDoor) -> None:
        self._fenced: dict[str, asyncio.Event] = {}
        door.subscribe(lambda model: self._event(model).set())

    async def wait(self, model: str, timeout_s: float) -> None:
        """Wait until a request for ``model`` waits at its fence."""
        async with asyncio.timeout(timeout_s):
            await self._event(model).wait()

    def _event(self, model: str) -> asyncio.Event:
        return self._fenced.setdefault(model, asyncio.Event())
