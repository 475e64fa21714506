"""Background loops that stop reliably."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("kaltstart.background")

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


class Background:
    """Fire-and-forget tasks kept referenced until done (the event loop holds only weak references to tasks), so
    that they can be waited for or cancelled at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every task, those that tasks start meanwhile too; their exceptions are theirs to log."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait until they have ended."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
