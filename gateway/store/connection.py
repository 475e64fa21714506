"""The gateway's Redis client, and where redis-py's exceptions become ours.

The pool is bounded and *blocking*: at ``redis_max_connections`` a command waits up to ``redis_pool_timeout_s`` for
a connection to come free instead of failing at once (redis-py's default pool raises "Too many connections" on the
first command that finds every connection taken, which turned a healthy burst into 503s). Every socket has a
timeout, so a Redis that stops answering cannot hang a request: the command fails, the request gets 503 +
Retry-After, and the log says why (at most once a second, so an outage does not flood it).

``REDIS_URL`` may name a primary behind Redis Sentinel (``redis+sentinel://``, ``wire.redis_url``): each new
connection asks the Sentinels where the primary is, so after a failover the pool, the pub/sub subscription (which
reconnects, ``gateway.relay.transport``) and the scripts (loaded again on ``NOSCRIPT``, ``gateway.queue.stream``)
follow the new primary; commands that meet the failover itself fail as in any outage (503 + Retry-After).

It may also name a Redis Cluster (``redis+cluster://``): redis-py's cluster client, bounded per node; at the bound a
command fails (503) instead of waiting, as its pools do not block (docs/reliability.md, "Redis Cluster").
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from gateway.errors import QueueUnavailable
from gateway.settings import QueueSettings
from wire.redis_url import PoolLimits, RedisClient, client

log = logging.getLogger("kaltstart.redis")

#: Least time between two "Redis unavailable" log lines.
LOG_EVERY_S = 1.0


class Throttle:
    """True at most once every ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._last = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._every_s:
            return False
        self._last = now
        return True


_log_now = Throttle(LOG_EVERY_S)


def connect(url: str, settings: QueueSettings) -> RedisClient:
    """The client of the Redis at ``url``: one server, or a primary found through Sentinel (``wire.redis_url``)."""
    limits = PoolLimits(
        timeout_s=settings.redis_timeout_s,
        max_connections=settings.redis_max_connections,
        pool_timeout_s=settings.redis_pool_timeout_s,
    )
    return client(url, limits)


@contextlib.asynccontextmanager
async def converted() -> AsyncIterator[None]:
    """Redis errors inside the block become ``QueueUnavailable`` (a 503 for a request), logged."""
    try:
        yield
    except RedisError as exc:
        raise unavailable(exc) from exc


def unavailable(exc: RedisError) -> QueueUnavailable:
    """The ``QueueUnavailable`` to raise for ``exc`` (logged, at most once a second)."""
    if _log_now():
        log.warning("Redis unavailable: %r", exc)
    return QueueUnavailable()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
