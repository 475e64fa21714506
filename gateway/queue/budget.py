"""What one model, one API key and the whole Redis may hold: the byte budget and the per-key quotas.

Redis holds every request from its enqueue to its answer, and it is shared: one key, or one model, that filled it
would take every model down (with ``maxmemory`` and ``noeviction``, every write fails, settles too). Three limits:

- **Accounts.** Each request is charged to its model's account and to its API key's (``Account``): its bytes (its
  body, stored once however many choices it has, plus its entries), its entries (one per choice) and itself. The
  enqueue script refuses a request that would take an account over its limits (429 + Retry-After), atomically
  with the enqueue; the settle of the request's last choice releases the charge. A charge nobody releases (its
  gateway died) lapses at the request's deadline (``keys.model_held``), so a quota never leaks.
- **The door.** A request's prompt bytes times its choices are bounded (``max_choice_bytes``, 413): every choice is
  sent to a runtime with its prompt.
- **Redis memory** (``MemoryGuard``). Above a high-water mark of ``maxmemory`` new requests are refused with 503 +
  Retry-After. The accounts bound what requests hold, but not what else Redis holds (settled replies, stream
  overhead, other tenants of a shared Redis); the mark keeps the rest for the writes that must not fail: the
  settles, cancellations and requeues of requests already accepted, which a full Redis would refuse (its clients
  would then wait out their deadline for an answer that was generated).

The per-key accounts live under their own hash tag (``keys.key_held``), declared to the scripts with the model's
keys on one Redis; on a Redis Cluster (another slot) the key's charge is a step of its own
(``gateway.queue.keycharges``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import ResponseError

from gateway.errors import QueueMemoryFull
from gateway.store.connection import converted
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.budget")

#: How long a reading of Redis's memory is used: one ``INFO memory`` a second per gateway replica at most.
MEMORY_CHECK_S = 1.0
#: What a refusal for Redis memory tells the client to wait.
MEMORY_RETRY_AFTER_S = 5


def account_id(api_key: str) -> str:
    """The name of a key's account in Redis: a hash of the key, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Quota:
    """One API key's limits over every model (``None``: the gateway's setting)."""

    max_requests: int | None = None
    max_entries: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class Account:
    """An API key's account: ``id`` names it in Redis, ``label`` in metrics (its configured name, else a short hash)."""

    id: str
    label: str
    max_requests: int
    max_entries: int
    max_bytes: int


class MemoryGuard:
    """Refuses new requests (``QueueMemoryFull``) while Redis uses more than ``high_water`` of its ``maxmemory``.

    Reads ``INFO memory`` at most once every ``MEMORY_CHECK_S``; between two readings it adds the bytes this gateway
    enqueued since (``added``), so a burst cannot run far past the mark on a stale reading. A Redis without
    ``maxmemory`` (0), or one that refuses ``INFO`` (an ACL), is never refused for memory.
    """

    def __init__(self, redis: RedisClient, high_water: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._high_water = high_water
        self._clock = clock
        self._read_at = float("-inf")
        self._used = 0
        self._max = 0
        self._added = 0
        self._lock = asyncio.Lock()
        self._off = False

    async def check(self) -> None:
        if self._off:
            return
        if self._clock() - self._read_at >= MEMORY_CHECK_S:
            async with self._lock:  # one reading for everyone waiting
                if self._clock() - self._read_at >= MEMORY_CHECK_S:
                    await self._read()
        if self._max and self._used + self._added >= self._high_water * self._max:
            raise QueueMemoryFull(
                "The request queue is near its memory limit; try again shortly.", retry_after_s=MEMORY_RETRY_AFTER_S
            )

    def added(self, size: int) -> None:
        """``size`` bytes were enqueued here since the last reading."""
        self._added += size

    async def _read(self) -> None:
        async with converted():
            try:
                info = await self._redis.info("memory")
            except ResponseError as exc:  # pragma: no cover - an ACL without INFO
                log.warning("cannot read Redis memory (%s): requests are not refused for it", exc)
                self._off = True
                return
        self._used, self._max = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        self._added = 0
        self._read_at = self._clock()
