"""The scale-down fence: a model is never scaled to zero with a request in its queue.

The race it closes: the autoscaler sees a model idle and writes ``replicas: 0`` while a request is being queued;
the request would then wait for a replica nobody asks for. So a scale-down is written only while holding the
model's fence, taken atomically together with the check that nothing is queued or in flight and the model has
been idle long enough (``hold``). While the fence is held, enqueueing refuses (the enqueue script starts with
``REFUSE_IF_FENCED``) and the request waits at the door (``FencedDoor.enter``) until the fence is lifted — its
lift is announced on pub/sub — or its TTL runs out (its holder died mid-way). The request then scales the model
up again with a fresh read of the replica count, since the count may just have been lowered.

Every part of the rule is here: the scripts, the TTL, the lifted event and the wait at the door.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.store import keys
from gateway.store.connection import converted
from wire.redis_url import RedisClient

T = TypeVar("T")

#: Longest a scale-down may hold its fence (new requests for the model wait meanwhile). A scale write takes
#: milliseconds; the TTL only matters if the holder dies mid-way.
FENCE_TTL_S = 10.0

#: Lua prelude of the enqueue script (KEYS[3] is the model's fence): the fence's ms left if it is held.
REFUSE_IF_FENCED = """
local fenced = redis.call('PTTL', KEYS[3])
if fenced > 0 then return fenced end
"""

# KEYS: queue, activity, fence. ARGV: idle ms, ttl ms, token. -> 1 if the model is idle and now fenced.
_HOLD_IF_IDLE = """
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
local last = redis.call('GET', KEYS[2])
if last then
  local t = redis.call('TIME')
  if t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(last) < tonumber(ARGV[1]) then return 0 end
end
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: fence. ARGV: token, channel, model.
_LIFT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 0
"""


@dataclass(frozen=True)
class Fenced:
    """The model is being scaled down; try again when the fence is lifted (at the latest after this long)."""

    seconds_left: float


class Fence:
    """Taking and lifting models' fences (the autoscaler's side)."""

    def __init__(self, redis: RedisClient, ttl_s: float = FENCE_TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._hold_if_idle = redis.register_script(_HOLD_IF_IDLE)
        self._lift = redis.register_script(_LIFT)

    @contextlib.asynccontextmanager
    async def hold(self, models: Sequence[str], idle_s: float) -> AsyncIterator[bool]:
        """Fence every model (all or none) if each is idle for ``idle_s`` with nothing queued or in flight; yields
        whether they are fenced. The fences are lifted when the block is left, however it is left."""
        token = uuid.uuid4().hex
        held: list[str] = []
        try:
            for model in models:
                if not await self._take(model, idle_s, token):
                    break
                held.append(model)
            if len(held) < len(models):  # one is busy: let the others' requests in at once
                await self._release_all(held, token)
                held = []
            yield bool(held) or not models
        finally:
            await self._release_all(held, token)

    async def _release_all(self, models: Sequence[str], token: str) -> None:
        for model in models:
            await self._release(model, token)

    async def _take(self, model: str, idle_s: float, token: str) -> bool:
        async with converted():
            taken = await self._hold_if_idle(
                keys=[keys.queue(model), keys.activity(model), keys.fence(model)],
                args=[int(idle_s * 1000), int(self._ttl_s * 1000), token],
            )
        return bool(taken)

    async def _release(self, model: str, token: str) -> None:
        async with converted():
            await self._lift(keys=[keys.fence(model)], args=[token, keys.FENCES, model])


class FencedDoor:
    """Where requests wait while their model's fence is held (the request path's side).

    ``lifted`` is fed by the gateway's one pub/sub subscription (``keys.FENCES`` carries the model name)."""

    def __init__(self) -> None:
        self._lifted: dict[str, asyncio.Event] = {}
        self._wait_listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(model)`` whenever a request starts waiting at the model's fence; returns an
        unsubscribe function."""
        self._wait_listeners.append(listener)
        return lambda: self._wait_listeners.remove(listener)

    def lifted(self, model: str) -> None:
        event = self._lifted.pop(model, None)
        if event is not None:
            event.set()

    async def enter(self, model: str, attempt: Callable[[], Awaitable[T | Fenced]]) -> tuple[T, bool]:
        """Run ``attempt`` (an enqueue) until it is not fenced out; returns its result and whether we waited.
        The lifted event is taken before each attempt, so a lift between the attempt and the wait is not missed."""
        waited = False
        while True:
            lifted = self._lifted.setdefault(model, asyncio.Event())
            result = await attempt()
            if not isinstance(result, Fenced):
                return result, waited
            waited = True
            for listener in list(self._wait_listeners):
                listener(model)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lifted.wait(), timeout=result.seconds_left)
