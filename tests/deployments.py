"""Redis deployments of real processes for tests (``tests.sentinels``, ``tests.clusters``), started alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar


class Deployment(Protocol):
    def start(self) -> None: ...

    async def ready(self) -> None: ...

    def stop(self) -> None: ...


D = TypeVar("D", bound=Deployment)


@contextlib.asynccontextmanager
async def running(deployment: D) -> AsyncIterator[D]:
    """``deployment`` started and ready for the block, stopped after it (also when it failed to start)."""
    try:
        deployment.start()
        await deployment.ready()
        yield deployment
    finally:
        deployment.stop()
