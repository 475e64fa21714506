"""Redis deployments of real processes for tests (``tests.sentinels``, ``tests.clusters``), started alike."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar


class Deployment(Protocol):
    def start(self) -> None: ...

    async def ready(self) -> None: ...

    def stop(self) -> None: ...


D = TypeVar("D", bound=Deployment)

#: Ports for the servers (and a cluster's buses), below Linux's ephemeral range (32768-60999): a port picked there
#: can be taken by any outgoing connection (the gateway's, the runtimes') before the server binds it, which then
#: exits at start.
PORTS = range(20000, 32000)


def quiet_port() -> int:
    """A port of ``PORTS`` free on 127.0.0.1 right now."""
    for _ in range(100):
        port = random.choice(PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


@contextlib.asynccontextmanager
async def running(deployment: D) -> AsyncIterator[D]:
    """``deployment`` started and ready for the block, stopped after it (also when it failed to start)."""
    try:
        deployment.start()
        await deployment.ready()
        yield deployment
    finally:
        deployment.stop()
