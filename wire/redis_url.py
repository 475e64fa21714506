"""Where Redis is: the one place a Redis URL becomes a client, for the gateway's queue and the runtime's announcer.

Two forms:

- ``redis://[[user]:password@]host:6379[/db]`` (also ``rediss://``, ``unix://``): one server, as redis-py reads it;
- ``redis+sentinel://[[user]:password@]host:26379[,host2:26379...]/service-name[/db]``: a primary found through
  Redis Sentinel. The user and password are the data nodes'; the Sentinels are asked without credentials unless
  the query names theirs (``?sentinel_username=...&sentinel_password=...``, percent-encoded like the rest). Every
  new connection asks the Sentinels for the primary's address; a primary that stops answering, or answers
  ``READONLY`` (it was demoted), drops the connection, and the next one goes to the new primary. Pub/sub
  subscribers reconnect the same way.

A URL whose parts do not parse raises ``ValueError`` naming the part (never echoing the password).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
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
        sentinels=tuple(_address(host) for host in hosts.split(",")),
        service=path[0],
        db=_db(path[1] if len(path) == 2 else "0"),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username", [""])[-1] or None,
        sentinel_password=query.get("sentinel_password", [""])[-1] or None,
    )


def _address(host: str) -> tuple[str, int]:
    if not host:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL names at least one Sentinel")
    name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not colon:
        name, port = host, str(SENTINEL_PORT)
    name = name.removeprefix("[").removesuffix("]")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a Sentinel address: {host!r} (host:port)")
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


def client(url: str, limits: PoolLimits) -> Redis:
    """A client of the Redis at ``url`` (either form), its connections bounded by ``limits``."""
    common: dict[str, Any] = {
        "socket_timeout": limits.timeout_s,
        "socket_connect_timeout": limits.timeout_s,
        "health_check_interval": limits.health_check_s,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE,
    }
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
