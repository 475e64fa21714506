"""Auto-pipelining: calls made in one turn of the event loop share one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.store.pipelining import Call, Coalesced

pytestmark = pytest.mark.unit


class Sender:
    """Records each round trip; answers each call with its first argument (or the error it names)."""

    def __init__(self) -> None:
        self.round_trips: list[list[Call]] = []
        self.down = False

    async def __call__(self, calls: Sequence[Call]) -> list[object]:
        self.round_trips.append(list(calls))
        if self.down:
            raise ConnectionError("Redis is down")
        return [ValueError(args[0]) if args[0] == "bad" else args[0] for _keys, args in calls]


async def test_calls_made_together_go_in_one_round_trip() -> None:
    sender = Sender()
    coalesced = Coalesced(sender)
    replies = await asyncio.gather(*(coalesced(["k"], [f"call {i}"]) for i in range(5)))
    assert replies == [f"call {i}" for i in range(5)]  # each caller gets its own reply
    assert len(sender.round_trips) == 1


async def test_a_lone_call_and_a_later_one_go_alone() -> None:
    sender = Sender()
    coalesced = Coalesced(sender)
    assert await coalesced(["k"], ["first"]) == "first"
    assert await coalesced(["k"], ["second"]) == "second"
    assert [len(trip) for trip in sender.round_trips] == [1, 1]


async def test_a_failed_call_fails_only_its_caller() -> None:
    coalesced = Coalesced(Sender())
    good, bad = await asyncio.gather(coalesced(["k"], ["good"]), coalesced(["k"], ["bad"]), return_exceptions=True)
    assert good == "good" and isinstance(bad, ValueError)


async def test_a_failed_round_trip_fails_every_caller() -> None:
    sender = Sender()
    sender.down = True
    coalesced = Coalesced(sender)
    replies = await asyncio.gather(*(coalesced(["k"], [str(i)]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in replies)


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    coalesced = Coalesced(Sender())
    leaving = asyncio.create_task(coalesced(["k"], ["leaving"]))
    staying = asyncio.create_task(coalesced(["k"], ["staying"]))
    await asyncio.sleep(0)  # both calls are held now
    leaving.cancel()
    assert await staying == "staying"
    assert leaving.cancelled()
