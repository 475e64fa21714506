"""Test helpers for the queue: requests to queue, entries as other gateways wrote them, and reads as a dispatcher
does them, without its batching window (``gateway.dispatch.window``)."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

import wire
from gateway.queue.stream import Delivery, QueuedRequest, RequestQueue
from gateway.store import keys


def queued(request_id: str, channel: str = "replies") -> QueuedRequest:
    request = wire.GenerationRequest(id=request_id, prompt="hi")
    return QueuedRequest(request=request, reply_to=channel, accepted_at=time.time())


async def read_batch(queue: RequestQueue, model: str, consumer: str, max_size: int = 100) -> list[Delivery]:
    """The deliveries of one read of up to ``max_size`` entries as ``consumer``."""
    return (await queue.read(model, consumer, max_size)).deliveries


def _unreadable_payload(request_id: str, channel: str = "replies") -> str:
    """A queued request as a gateway that did not bound schemas could write it: its tool schema nests past the
    queue reader's limit (200 levels), though the standard library's decoder reads it."""
    schema: dict[str, object] = {"type": "object"}
    for _ in range(120):
        schema = {"type": "object", "properties": {"a": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    request = {"id": request_id, "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    return json.dumps({"request": request, "reply_to": channel, "accepted_at": time.time()})


async def add_unreadable_entries(redis: Redis, model: str) -> None:
    """Entries with their request inline (``r``, as older gateways wrote them): one too deep to read, one not
    JSON; one without a payload; one referring to a body whose ``q`` is not JSON (the last three name no request).
    (``test_budget`` has a body's prompt that cannot be read.)"""
    await redis.xadd(keys.queue(model), {"r": _unreadable_payload("deep"), "i": "deep"})
    await redis.xadd(keys.queue(model), {"r": b"\xff not json"})
    await redis.xadd(keys.queue(model), {"x": "no payload"})
    await redis.xadd(keys.queue(model), {"q": b"\xff not json", "b": "gone", "p": 0})
