"""What a model's replicas reported about themselves: its context length, remembered in Redis.

A request whose ``max_tokens`` alone cannot fit the model's context is refused with 400 at the door — before it
is queued and, above all, before it starts a replica of a model at zero. The gateway cannot count prompt tokens
(it has no tokenizer), so the runtime still checks prompt + ``max_tokens`` exactly. The length is learnt from a
ready replica's ``/readyz`` report (``wire.ReadyBody``) the first time a dispatcher uses that replica, and kept in
Redis, so every gateway replica knows it, also after a restart and while the model is at zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.errors import InvalidRequest, QueueUnavailable
from gateway.store import keys
from gateway.store.connection import converted
from wire.redis_url import RedisClient

#: How long a model whose length is not known yet is not asked about again.
UNKNOWN_RECHECK_S = 30.0


class ContextLengths:
    def __init__(self, redis: RedisClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._clock = clock
        self._known: dict[str, int] = {}
        self._unknown_since: dict[str, float] = {}

    async def learn(self, model: str, length: int) -> None:
        if self._known.get(model) == length:
            return
        self._known[model] = length
        async with converted():
            await self._redis.set(keys.context_length(model), length)

    async def of(self, model: str) -> int | None:
        """The model's context length, if a replica ever reported it (a Redis read at most every 30 s while
        unknown)."""
        if model in self._known:
            return self._known[model]
        asked = self._unknown_since.get(model)
        if asked is not None and self._clock() - asked < UNKNOWN_RECHECK_S:
            return None
        self._unknown_since[model] = self._clock()
        try:
            async with converted():
                stored = await self._redis.get(keys.context_length(model))
        except QueueUnavailable:
            return None  # enqueueing will say so
        if stored is None:
            return None
        self._known[model] = int(stored)
        return self._known[model]

    async def check(self, model: str, max_tokens: int) -> None:
        """400 if ``max_tokens`` leaves no room for even one prompt token."""
        length = await self.of(model)
        if length is not None and max_tokens >= length:
            raise InvalidRequest(
                f"max_tokens ({max_tokens}) leaves no room for the prompt in this model's context of {length} tokens.",
                param="max_tokens",
            )
