"""Helpers for the child processes local mode starts (runtimes, the embedded Valkey)."""

from __future__ import annotations

import ctypes
import signal
import socket
import sys


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
