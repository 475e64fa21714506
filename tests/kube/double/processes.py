"""Pod processes: each one leads its own process group, so stopping a pod stops everything it started.

Every live group is also remembered at module level and killed at interpreter exit, so a test run that dies
between start and cleanup leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
from pathlib import Path

_live_groups: set[int] = set()


def _kill_all_groups() -> None:
    for group in list(_live_groups):
        _signal_group(group, signal.SIGKILL)
    _live_groups.clear()


atexit.register(_kill_all_groups)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PodProcess:
    """One running container: a real process started in a new session (and so a new process group)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid
        _live_groups.add(self.pid)

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], log_path: Path) -> PodProcess:
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        return cls(process)

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the process to exit, then kill whatever else is left in its group."""
        code = await self._process.wait()
        self._reap_group()
        return code

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        _signal_group(self.pid, sig)

    async def terminate(self, grace_s: float) -> int:
        """SIGTERM the group, then SIGKILL it if the process is still there after ``grace_s``."""
        self.kill(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self._process.wait()), grace_s)
        except TimeoutError:
            self.kill(signal.SIGKILL)
            return await self._process.wait()
        finally:
            self._reap_group()

    def _reap_group(self) -> None:
        _signal_group(self.pid, signal.SIGKILL)
        _live_groups.discard(self.pid)
