"""The gateway's Redis client, and where redis-py's exceptions become ours."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import QueueUnavailable


def connect(url: str) -> Redis:
    return Redis.from_url(url)


@contextlib.asynccontextmanager
async def converted() -> AsyncIterator[None]:
    """Redis errors inside the block become ``QueueUnavailable`` (a 503 for a request)."""
    try:
        yield
    except RedisError as exc:
        raise QueueUnavailable() from exc


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
