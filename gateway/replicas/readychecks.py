"""A replica's own word, from its ``GET /readyz``, before an announcement about it is believed.

Anyone who may publish on the replicas channel can announce anything about any address
(``gateway.replicas.announcements``).
A ready or stopping announcement about a replica the backend vouches for is therefore checked against the
replica itself: its ``/readyz`` must answer a ``wire.ReadyBody`` naming the model (ready), or must not (stopping),
and only that answer, never the announced one, is used. The checks are cheap by construction: one per replica and
announced state at most every ``MIN_CHECK_INTERVAL_S``, each bounded by ``CHECK_TIMEOUT_S``, at most
``MAX_CONCURRENT_CHECKS`` at once, and a check already under way for the same replica and state is not repeated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydantic import ValidationError

import wire
from gateway.replicas.client import RuntimeClient, RuntimeFailed

#: Longest a ``/readyz`` check may take before the replica counts as not ready (an answer takes milliseconds).
CHECK_TIMEOUT_S = 2.0
#: Most checks under way at once; further ones wait their turn.
MAX_CONCURRENT_CHECKS = 8
#: Least time between two checks of one replica for one announced state: a flood of announcements about a replica
#: costs it one request per second at most. A real replica renews its announcement every few seconds anyway.
MIN_CHECK_INTERVAL_S = 1.0

#: A replica and the state an announcement gave it.
CheckKey = tuple[str, wire.ReplicaState]


class ReadyChecks:
    def __init__(self, client: RuntimeClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        self._under_way: set[CheckKey] = set()
        self._last: dict[CheckKey, float] = {}

    def due(self, key: CheckKey) -> bool:
        """Whether ``key`` may be checked now (none under way, none in the last ``MIN_CHECK_INTERVAL_S``); if so,
        it counts as under way until ``read`` for it is done."""
        last = self._last.get(key)
        if key in self._under_way or (last is not None and self._clock() - last < MIN_CHECK_INTERVAL_S):
            return False
        self._under_way.add(key)
        self._last[key] = self._clock()
        return True

    async def read(self, key: CheckKey) -> wire.ReadyBody | None:
        """The replica's ready report, or None if it is not ready (any other answer, none, or none in time)."""
        url, _state = key
        try:
            async with self._slots, asyncio.timeout(CHECK_TIMEOUT_S):
                body = await self._client.get(url + wire.READY_PATH)
            return wire.ReadyBody.model_validate_json(body)
        except (RuntimeFailed, ValidationError, TimeoutError):
            return None
        finally:
            self._under_way.discard(key)

    def forget_before(self, moment: float) -> None:
        """Drop the times of checks made before ``moment`` (they no longer hold anything back)."""
        for key in [k for k, at in self._last.items() if at < moment]:
            del self._last[key]
