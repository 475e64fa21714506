"""An API key's charge as a step of its own, for a Redis Cluster (``gateway.queue.budget``'s per-key accounts).

On one Redis (or a Sentinel-managed primary) the enqueue script charges the request to its model's account and to
its API key's in one atomic step, and the settle of its last choice releases both. On a Redis Cluster the key's
account (``keys.key_held``, hash tag ``{k:<account>}``) is in another slot than the model's keys (``{m:<model>}``),
often on another node, and one script cannot touch both (``CROSSSLOT``). There the request takes three steps:

1. ``charge``: the key's account is charged (``scripts.CHARGE_KEY``), or refuses (429, nothing written);
2. the model's enqueue script, with the model's keys alone; if it refuses (queue full, model bytes, fenced), fails,
   or the enqueue is not replicated in time, the key's charge is released at once (``release``);
3. the settle of the request's last choice releases the model's charge in its script, which returns the charge,
   and then the key's (``release``).

A gateway that dies between two steps leaves the key charged for a request that is not queued, or answered: that
charge lapses at the request's deadline, as any charge nobody released (the ``ACCOUNTS`` prelude of
``gateway.queue.scripts``), so a key is over-charged for one deadline at most, never forever. A release that fails
(Redis unreachable) is logged and lapses the same way. Releasing is idempotent (``ZREM``): a charge released twice,
or one that lapsed meanwhile, changes nothing.

The same steps on one Redis would cost a round trip per request and give up atomicity for nothing: there the single
script stays.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import QueueUnavailable
from gateway.queue import scripts
from gateway.queue.budget import Account
from gateway.store import keys
from gateway.store.connection import text
from gateway.store.pipelining import Call, Coalesced
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.budget")

#: Runs a script once per call in one pipeline: a reply (or exception) per call (``RequestQueue._pipelined``).
Pipelined = Callable[[AsyncScript, Sequence[Call]], Awaitable[list[object]]]


def charge_of(body_id: str, entries: int, size: int) -> str:
    """A request's charge as the accounts hold it (``<body id>|<entries>|<bytes>``), as the enqueue script writes it."""
    return f"{body_id}|{entries}|{size}"


class KeyCharges:
    """Charges and releases API keys' accounts in steps of their own (a Redis Cluster)."""

    def __init__(self, redis: RedisClient, pipelined: Pipelined) -> None:
        self._charge = redis.register_script(scripts.CHARGE_KEY)
        self._release = redis.register_script(scripts.RELEASE_KEY)
        self._pipelined = pipelined
        self._coalesced = Coalesced(lambda calls: pipelined(self._charge, calls))

    async def charge(self, account: Account, charge: str, *, entries: int, size: int, ttl_ms: int) -> str | None:
        """Charge ``account``: None if charged, else why not (``'key-requests'``, ``'key-entries'``,
        ``'key-bytes'``). Raises ``QueueUnavailable`` if Redis fails."""
        limits = [account.max_requests, account.max_entries, account.max_bytes]
        try:
            reply = await self._coalesced(
                [keys.key_held(account.id), keys.key_usage(account.id)], [*limits, ttl_ms, charge, entries, size]
            )
        except RedisError as exc:
            raise QueueUnavailable() from exc
        return text(reply) if isinstance(reply, bytes) else None

    async def release(self, charges: Sequence[tuple[str, str]]) -> None:
        """Release each ``(account id, charge)`` (one round trip); one that cannot be released lapses at its
        deadline."""
        if not charges:
            return
        calls: list[Call] = [([keys.key_held(a), keys.key_usage(a)], [charge]) for a, charge in charges]
        try:
            replies = await self._pipelined(self._release, calls)
        except (RedisError, QueueUnavailable) as exc:
            replies = [exc]
        if failed := [r for r in replies if isinstance(r, BaseException)]:
            log.warning("%d key charge(s) not released (%r): they lapse at their deadline", len(failed), failed[0])
