"""Helpers for the child processes local mode starts (runtimes, the embedded Valkey)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import sys
from collections.abc import Callable

import httpx

#: One probe's own timeout: a process that accepts but does not answer is not ready.
PROBE_TIMEOUT_S = 2.0


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: the child gets SIGTERM when its parent dies, however the parent dies."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def probe_until_ready(
    url: str, *, exited: Callable[[], bool], period_s: float, timeout_s: float | None = None
) -> bool:
    """GET ``url`` every ``period_s`` until it answers 200 (True) or ``exited()`` says the process is gone
    (False); ``TimeoutError`` after ``timeout_s``. Another process's state has no event to wait on, so this
    polls, as a kubelet's readiness probe does."""
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client, asyncio.timeout(timeout_s):
        while not exited():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(period_s)
    return False
