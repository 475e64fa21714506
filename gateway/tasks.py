"""Background loops that stop reliably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("kaltstart.tasks")

#: Pause after a step failed unexpectedly, so a persistent fault does not spin.
CRASH_BACKOFF_S = 1.0


class Loop:
    """Runs ``step`` over and over in a task until stopped.

    Stopping sets a flag before cancelling the task: a cancellation swallowed inside a client library (seen
    with a blocking redis-py read) still ends the loop at its next turn instead of hanging shutdown. A step
    that raises is logged and retried after a pause.
    """

    def __init__(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._step = step
        self._task: asyncio.Task[None] | None = None
        self.stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; retrying in %.0f s", self.name, CRASH_BACKOFF_S)
                await asyncio.sleep(CRASH_BACKOFF_S)

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
