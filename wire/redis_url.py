"""Where Redis is: the one place a Redis URL becomes a client, for the gateway's queue and the runtime's announcer.

Three forms:

- ``redis://[[user]:password@]host:6379[/db]`` (also ``rediss://``, ``unix://``): one server, as redis-py reads it;
- ``redis+sentinel://[[user]:password@]host:26379[,host2:26379...]/service-name[/db]``: a primary found through
  Redis Sentinel. The user and password are the data nodes'; the Sentinels are asked without credentials unless
  the query names theirs (``?sentinel_username=...&sentinel_password=...``, percent-encoded like the rest). Every
  new connection asks the Sentinels for the primary's address; a primary that stops answering, or answers
  ``READONLY`` (it was demoted), drops the connection, and the next one goes to the new primary. Pub/sub
  subscribers reconnect the same way.
- ``redis+cluster://[[user]:password@]host:6379[,host2:6379...]``: a Redis Cluster, through redis-py's cluster
  client (``RedisCluster``), which learns the slot map from any of the nodes named (a few are enough) and follows
  ``MOVED`` redirections and failovers. A cluster has database 0 only: a path other than ``/`` or ``/0`` is
  refused. Each node gets at most ``max_connections`` connections; at the bound a command fails at once (redis-py's
  cluster client has no blocking pool), which the gateway answers as any Redis failure (503 + Retry-After).

A URL whose parts do not parse raises ``ValueError`` naming the part (never echoing the password).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

#: A client of either kind: one server (or a Sentinel-managed primary), or a Redis Cluster. redis-py's cluster client
#: is not a ``Redis``, but has the same commands, ``pipeline`` (non-transactional pipelines grouped by node,
#: transactions within one slot), ``register_script`` and ``pubsub``.
RedisClient: TypeAlias = Redis | RedisCluster

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
#: The port of a cluster node named without one.
CLUSTER_PORT = 6379
#: The port of a Sentinel named without one.
SENTINEL_PORT = 26379
_SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


@dataclass(frozen=True)
class ClusterTarget:
    """A ``redis+cluster://`` URL, parsed: the nodes to learn the cluster from, and the nodes' credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class PoolLimits:
    """``max_connections``: at most that many connections, a command waiting up to ``pool_timeout_s`` for one to
    come free (a blocking pool); None: redis-py's default pool. ``timeout_s``: a reply's and a connect's longest
    wait. ``health_check_s``: an idle connection is pinged before it is used again after this long."""

    timeout_s: float
    max_connections: int | None = None
    pool_timeout_s: float = 5.0
    health_check_s: int = 30


#: TCP keep-alive on every connection: a server whose node vanished (no RST, as after a ``kill -9`` on the same
#: host) is found dead in about 5 + 3 x 2 = 11 s even on a connection that only listens (the pub/sub one), so a
#: subscriber moves to the new primary after a failover instead of waiting out the kernel's retransmissions.
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME + "://")


def parse_cluster(url: str) -> ClusterTarget:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]``."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has database 0 only: {CLUSTER_SCHEME}://host:6379[,host:6379...]")
    if parts.query:
        raise ValueError(f"a {CLUSTER_SCHEME}:// URL takes no parameters")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    return ClusterTarget(
        nodes=tuple(_address(host, CLUSTER_SCHEME, CLUSTER_PORT) for host in hosts.split(",")),
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def parse_sentinel(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_...]``."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL names its service: {SENTINEL_SCHEME}://host:26379/service[/db]")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    unknown = set(query) - _SENTINEL_QUERY
    if unknown:
        raise ValueError(f"unknown {SENTINEL_SCHEME}:// parameter(s): {', '.join(sorted(unknown))}")
    return SentinelTarget(
        sentinels=tuple(_address(host, SENTINEL_SCHEME, SENTINEL_PORT) for host in hosts.split(",")),
        service=path[0],
        db=_db(path[1] if len(path) == 2 else "0"),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username", [""])[-1] or None,
        sentinel_password=query.get("sentinel_password", [""])[-1] or None,
    )


def _address(host: str, scheme: str, default_port: int) -> tuple[str, int]:
    what = "Sentinel" if scheme == SENTINEL_SCHEME else "cluster node"
    if not host:
        raise ValueError(f"a {scheme}:// URL names at least one {what}")
    name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not colon:
        name, port = host, str(default_port)
    name = name.removeprefix("[").removesuffix("]")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a {what} address: {host!r} (host:port)")
    return name, int(port)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"not a database number: {text!r}")
    return int(text)


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, which also closes its Sentinel clients when it is closed (``Redis.aclose``)."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.sentinel_manager.aclose()


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """A bounded Sentinel pool whose commands wait for a free connection (as ``BlockingConnectionPool``)."""


def client(url: str, limits: PoolLimits) -> RedisClient:
    """A client of the Redis at ``url`` (any form), its connections bounded by ``limits``."""
    common: dict[str, Any] = {
        "socket_timeout": limits.timeout_s,
        "socket_connect_timeout": limits.timeout_s,
        "health_check_interval": limits.health_check_s,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE,
    }
    if is_cluster(url):
        return _cluster(parse_cluster(url), limits, common)
    if limits.max_connections is not None:
        common |= {"max_connections": limits.max_connections, "timeout": limits.pool_timeout_s}
    if not is_sentinel(url):
        if limits.max_connections is None:
            return Redis.from_url(url, **common)
        return Redis.from_pool(BlockingConnectionPool.from_url(url, **common))
    target = parse_sentinel(url)
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs={
            "socket_timeout": limits.timeout_s,
            "socket_connect_timeout": limits.timeout_s,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
    )
    pool_class = _SentinelPool if limits.max_connections is None else _BlockingSentinelPool
    return sentinel.master_for(  # type: ignore[no-any-return]
        target.service,
        connection_pool_class=pool_class,
        db=target.db,
        username=target.username,
        password=target.password,
        **common,
    )


def _cluster(target: ClusterTarget, limits: PoolLimits, common: dict[str, Any]) -> RedisCluster:
    """A cluster client: ``max_connections`` per node, without a pool timeout (its pools do not block)."""
    if limits.max_connections is not None:
        common["max_connections"] = limits.max_connections
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        **common,
    )
