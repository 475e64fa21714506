"""Who owns a served model name, recorded in Redis so that every gateway replica, and a restarted one, honours the
same owner (``RouteTable`` decides, the backend hands its writes to an ``OwnerStore``).

One hash (``keys.ROUTE_OWNERS``): model name -> ``<namespace>/<name>/<uid>`` of the Deployment that serves it. The
uid is part of the owner: a Deployment deleted and created again under the same name is a new object, so a new
claimant, exactly as a running gateway that saw the deletion hands the name on at once. Two writes, each atomic
in one script:

- ``Claim``: record the owner if the name has none (set-if-absent); the answer is whoever is recorded after it,
  so of two gateways deciding at once one wins and the other adopts the winner;
- ``Release``: delete the record only if it still names that owner (compare-and-delete), so a gateway that saw a
  drop late never removes the record of the owner that came after.

Only the gateway writes this hash (the Redis of the queue, never reachable with the model pods' publish-only
user); a value it cannot read names no Deployment and is released like any owner that dropped its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from redis.exceptions import NoScriptError

from gateway.backends.kubernetes.claims import DeploymentRef
from gateway.store import keys
from gateway.store.connection import converted, text
from wire.redis_url import RedisClient


@dataclass(frozen=True)
class Owner:
    """A Deployment as the owner of a name: which one, and which object of that name (its ``metadata.uid``)."""

    deployment: DeploymentRef
    uid: str

    def __str__(self) -> str:
        return f"{self.deployment}/{self.uid}"

    @classmethod
    def parse(cls, stored: str) -> Owner:
        namespace, _, rest = stored.partition("/")
        name, _, uid = rest.partition("/")
        return cls(DeploymentRef(namespace, name), uid)


@dataclass(frozen=True)
class Claim:
    """Record ``owner`` for ``model`` unless someone is recorded already."""

    model: str
    owner: Owner


@dataclass(frozen=True)
class Release:
    """Delete ``model``'s record if it still names ``owner``."""

    model: str
    owner: Owner


Write = Claim | Release


class OwnerStore(Protocol):
    """Where the owners of model names are recorded (shared by all gateway replicas, kept over restarts). Raises
    ``QueueUnavailable`` when it cannot be reached."""

    async def read(self) -> dict[str, Owner]:
        """Every recorded owner by model name."""
        ...

    async def write(self, writes: Sequence[Write]) -> list[Owner | None]:
        """Apply ``writes`` in order; for each, the owner its model has recorded right after it (None: none)."""
        ...

    async def aclose(self) -> None: ...


# KEYS[1]: the owners hash. ARGV: "claim" or "release", the model name, the owner. Returns the owner recorded after.
_WRITE = """
local current = redis.call('HGET', KEYS[1], ARGV[2])
if ARGV[1] == 'claim' then
  if current then return current end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  return ARGV[3]
end
if current == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return false
end
return current
"""


class RedisOwners:
    """The owners hash in the gateway's Redis; owns its client (closed by ``aclose``)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._script = redis.register_script(_WRITE)

    async def read(self) -> dict[str, Owner]:
        async with converted():
            stored = await self._redis.hgetall(keys.ROUTE_OWNERS)
        return {text(model): Owner.parse(text(owner)) for model, owner in stored.items()}

    async def write(self, writes: Sequence[Write]) -> list[Owner | None]:
        """One pipeline; a script Redis lost (a restart) is loaded and the whole batch goes again: no write of it
        ran, since each call is the same missing script."""
        async with converted():
            replies = await self._pipelined(writes)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                await self._redis.script_load(_WRITE)
                replies = await self._pipelined(writes)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return [None if reply is None else Owner.parse(text(cast(bytes, reply))) for reply in replies]

    async def _pipelined(self, writes: Sequence[Write]) -> list[object]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for write in writes:
                op = "claim" if isinstance(write, Claim) else "release"
                pipe.evalsha(self._script.sha, 1, keys.ROUTE_OWNERS, op, write.model, str(write.owner))
            return cast(list[object], await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        await self._redis.aclose()
