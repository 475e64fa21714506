"""The durable request queue: one Redis Stream per model, read through one consumer group by every replica.

Life of an entry: ``enqueue`` (XADD) -> a dispatcher's ``read_batch`` (XREADGROUP: now pending, i.e. in flight)
-> ``settle`` (final reply stored and published, entry acked and deleted) or ``requeue`` (a fresh entry with
attempt + 1, old one deleted) or ``cancel`` (the client gave up). Every multi-key step is one Lua script, so a
request is answered at most once however its deliveries race (the scripts: ``gateway.queuescripts``). Redis
errors become ``QueueUnavailable`` here.

A read never raises for what an entry holds: an entry that does not read back as a request (``Unreadable``: nested
past the reader's limit by a gateway that did not bound it, or not a request at all) is settled as failed, for its
own request only, by whichever read finds it (a dispatcher's, or the janitor's ``take_over``); the entries read
with it go on as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

import wire
from gateway import keys
from gateway import queuescripts as scripts
from gateway.connection import converted, text, unavailable
from gateway.errors import QueueFull
from gateway.fence import Fenced
from gateway.messages import Failed, Final, Finished, ReplyAdapter
from gateway.pipelining import Call, Coalesced
from gateway.work import WorkSignals
from gateway.work import message as work_message

log = logging.getLogger("kaltstart.queue")

#: How long a settled marker outlives its request: long enough to suppress any late duplicate.
SETTLED_TTL_MS = 3_600_000
CANCELLED = "cancelled"
#: The answer to a request whose entry cannot be read back (``Unreadable``).
UNREADABLE_MESSAGE = "The request could not be read back from the queue (it nests too deeply or is malformed)."


class QueuedRequest(BaseModel):
    """What one stream entry holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    request: wire.GenerationRequest
    #: The reply channel of the gateway replica holding the client.
    reply_to: str
    #: Unix time (s) the gateway accepted it.
    accepted_at: float
    #: 1 for the first dispatch, +1 each time it is put back for any reason. Tokens carry it, so a client's ticket
    #: knows a new attempt starts again from the first token.
    attempt: int = 1
    #: How many times a replica failed while generating it: a request whose replica fails every time is a poison
    #: request, given up after ``max_attempts`` (an outage or a gateway's shutdown does not count).
    failures: int = 0
    #: The gateway replica that accepted it (whose heartbeat says whether anyone still waits for the answer).
    gateway: str = ""

    @property
    def id(self) -> str:
        return self.request.id


class CancelNotice(BaseModel):
    """Broadcast on ``keys.CANCELS`` when a request is cancelled."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    id: str


@dataclass(frozen=True)
class Delivery:
    entry_id: str
    queued: QueuedRequest


@dataclass(frozen=True)
class Unreadable:
    """A stream entry that does not read back as a ``QueuedRequest``, and what could be made out of it: its
    request's id and reply channel ("" where not even those)."""

    entry_id: str
    request_id: str
    reply_to: str
    #: Why it could not be read (for the log; never shown to a client).
    reason: str


@dataclass(frozen=True)
class Settlement:
    """A request's final reply to store; ``publish=False``: stored only (handed over in-process by the caller)."""

    delivery: Delivery
    reply: Final
    publish: bool = True


@dataclass(frozen=True)
class Read:
    deliveries: list[Delivery]
    #: The read found fewer new entries than it asked for: the queue held no more at that moment.
    drained: bool


@dataclass(frozen=True)
class Load:
    """A model's demand, as every gateway replica sees it (derived from the stream, so it survives restarts)."""

    queued: int
    in_flight: int
    #: Seconds since the last enqueue or settle; None if the model has never been used.
    idle_for_s: float | None

    @property
    def demand(self) -> int:
        return self.queued + self.in_flight


class RequestQueue:
    def __init__(self, redis: Redis, max_queue_per_model: int, work: WorkSignals | None = None) -> None:
        """``work``: told of every entry this queue adds (and published for the other gateway replicas)."""
        self._redis = redis
        self._max = max_queue_per_model
        self.work = work if work is not None else WorkSignals("")
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._settle = redis.register_script(scripts.SETTLE)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._read_script = redis.register_script(scripts.READ)
        self._coalesced_enqueue = Coalesced(lambda calls: self._pipelined(self._enqueue, calls))

    async def prepare(self, model: str) -> None:
        """Create the model's stream and consumer group if missing (reading from the start: nothing queued
        before the group existed is lost)."""
        async with converted():
            try:
                await self._redis.xgroup_create(keys.queue(model), keys.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def enqueue(self, model: str, queued: QueuedRequest) -> str | Fenced:
        """Queue a request: its entry id, or ``Fenced`` while a scale-down of the model is being written."""
        async with converted():
            entry = await self._coalesced_enqueue(
                [keys.queue(model), keys.activity(model), keys.fence(model)],
                [self._max, queued.model_dump_json(), queued.id, *self._work_message(model)],
            )
        if entry == 0:
            raise QueueFull(f"Too many requests are queued for model '{model}'; try again later.", retry_after_s=5)
        if isinstance(entry, int):
            return Fenced(seconds_left=entry / 1000)
        self.work.notify(model)
        return text(cast(bytes, entry))

    def _work_message(self, model: str) -> tuple[str, str]:
        """The work signal to publish with an entry added now (``gateway.work``)."""
        return keys.WORK, work_message(self.work.gateway_id, model, taken=self.work.taken_here(model))

    async def backlog(self, model: str) -> None:
        """A dispatcher here read less than the queue holds: wake the other gateways' dispatchers to help."""
        async with converted():
            await self._redis.publish(keys.WORK, work_message(self.work.gateway_id, model, taken=False))

    async def read_batch(self, model: str, consumer: str, max_size: int, fill_s: float) -> list[Delivery]:
        return (await self.read(model, consumer, max_size, fill_s)).deliveries

    async def read(self, model: str, consumer: str, max_size: int, fill_s: float) -> Read:
        """Read up to ``max_size`` queued requests without blocking; if some were there, give others ``fill_s``
        to join the batch. (To wait for work, wait on ``work.event(model)``, cleared before this read.)

        No window when the first entry has waited that long already: a backlog (requests that waited through a cold
        start, or for a busy replica) goes at once with what is there.
        """
        read = await self._read(model, consumer, max_size)
        batch = read.deliveries
        if batch and len(batch) < max_size and fill_s > 0 and not _waited(batch, fill_s):
            try:
                await asyncio.sleep(fill_s)  # the batching window itself: an intended delay
                read = await self._read(model, consumer, max_size - len(batch))
                batch += read.deliveries
            except asyncio.CancelledError:
                await asyncio.shield(self.put_back(model, batch))
                raise
        return Read(batch, read.drained)

    async def put_back(self, model: str, batch: Sequence[Delivery]) -> None:
        """Return read entries to the queue unchanged (this dispatcher is stopping before it could send them)."""
        for delivery in batch:
            await self.requeue(model, delivery, failed=False)

    async def _read(self, model: str, consumer: str, count: int) -> Read:
        """Read up to ``count`` new entries, those of settled requests dropped (one round trip)."""
        async with converted():
            response = await self._read_script(
                keys=[keys.queue(model)], args=[keys.GROUP, consumer, count, keys.settled(model, "")]
            )
        if response == -1:
            await self.prepare(model)  # Redis lost its data (restart without persistence, flush)
            return Read([], drained=False)
        read, *flat = cast(list[bytes | int], response)
        deliveries: list[Delivery] = []
        unchecked: list[Delivery] = []
        unreadable: list[Unreadable] = []
        for at in range(0, len(flat), 3):
            entry_id, payload, request_id = (cast(bytes, field) for field in flat[at : at + 3])
            delivery = _delivery(text(entry_id), payload, request_id)
            if isinstance(delivery, Unreadable):
                unreadable.append(delivery)
            else:
                (deliveries if request_id else unchecked).append(delivery)
        await self._fail_unreadable(model, unreadable)
        if unchecked:
            deliveries += await self._drop_settled(model, unchecked)
        return Read(deliveries, drained=cast(int, read) < count)

    async def _fail_unreadable(self, model: str, entries: Sequence[Unreadable]) -> None:
        """Settle each unreadable entry's request as failed (400: its client hears at once, or at its next look
        at its settled key), acking and deleting the entry; one whose request cannot be made out is only dropped."""
        for entry in entries:
            log.error(
                "failing an unreadable entry of %s (entry %s, request %.128r): %s",
                model, entry.entry_id, entry.request_id, entry.reason,
            )  # fmt: skip
        known = [e for e in entries if e.request_id]
        calls: list[Call] = [
            (
                [keys.queue(model), keys.settled(model, e.request_id), keys.activity(model)],
                [e.entry_id, keys.GROUP, SETTLED_TTL_MS, e.reply_to, _unreadable_reply(e).model_dump_json()],
            )
            for e in known
        ]
        for reply in await self._pipelined(self._settle, calls) if calls else []:
            _raised(reply)
        if anonymous := [e.entry_id for e in entries if not e.request_id]:
            async with converted(), self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(keys.queue(model), keys.GROUP, *anonymous)
                pipe.xdel(keys.queue(model), *anonymous)
                await pipe.execute()

    async def settle(self, model: str, delivery: Delivery, reply: Final, *, publish: bool = True) -> bool:
        """Store and publish a request's final reply and drop its entry. False if it was settled already.
        ``publish=False``: stored only (the caller hands it over in-process, if first)."""
        return (await self.settle_many(model, [Settlement(delivery, reply, publish)]))[0]

    async def settle_many(self, model: str, settlements: Sequence[Settlement]) -> list[bool]:
        """``settle`` several requests of one model in one round trip (a pipeline of the settle script)."""
        calls: list[Call] = [
            (
                [keys.queue(model), keys.settled(model, s.delivery.queued.id), keys.activity(model)],
                [
                    s.delivery.entry_id,
                    keys.GROUP,
                    SETTLED_TTL_MS,
                    s.delivery.queued.reply_to if s.publish else "",
                    s.reply.model_dump_json(),
                ],
            )
            for s in settlements
        ]
        return [bool(_raised(first)) for first in await self._pipelined(self._settle, calls)]

    async def _pipelined(self, script: AsyncScript, calls: Sequence[Call]) -> list[object]:
        """Run ``script`` once per call in one pipeline; a failed call's reply is its exception. By the script's
        SHA: given a ``Script`` object, redis-py checks that it exists (a round trip of its own) on every such
        pipeline. A missing script (Redis restarted) fails every call, none ran: it is loaded and they go again."""
        async with converted():
            replies = await self._run_pipelined(script, calls)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                await self._redis.script_load(script.script)
                replies = await self._run_pipelined(script, calls)
        return replies

    async def _run_pipelined(self, script: AsyncScript, calls: Sequence[Call]) -> list[object]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script_keys, args in calls:
                pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            return cast(list[object], await pipe.execute(raise_on_error=False))

    async def cancel(self, model: str, request_id: str, entry_id: str) -> bool:
        """The client stopped waiting: make sure the request is never dispatched or answered, and announce it
        (``keys.CANCELS``) so that whichever dispatcher has it in a running batch tells its runtime to stop.
        False if a final reply got there first."""
        notice = CancelNotice(model=model, id=request_id).model_dump_json()
        async with converted():
            first = await self._settle(
                keys=[keys.queue(model), keys.settled(model, request_id), keys.activity(model)],
                args=[entry_id, keys.GROUP, SETTLED_TTL_MS, keys.CANCELS, CANCELLED, notice],
            )
        return bool(first)

    async def requeue(self, model: str, delivery: Delivery, *, failed: bool = True) -> bool:
        """Put a request back at the end of the queue as its next attempt, counting a failure if its replica
        ``failed`` (not if the gateway dispatching it is shutting down, or lost Redis)."""
        queued = delivery.queued
        again = queued.model_copy(update={"attempt": queued.attempt + 1, "failures": queued.failures + int(failed)})
        async with converted():
            entry = await self._requeue(
                keys=[keys.queue(model), keys.settled(model, delivery.queued.id)],
                args=[delivery.entry_id, keys.GROUP, again.model_dump_json(), queued.id, *self._work_message(model)],
            )
        if entry is None:
            return False
        self.work.notify(model)
        return True

    async def _drop_settled(self, model: str, batch: Sequence[Delivery]) -> list[Delivery]:
        """Ack and delete the entries of requests already settled (cancelled by their client); return the rest.
        (For entries without the request id field, which the read script checks itself.)"""
        async with converted():
            markers = await self._redis.mget([keys.settled(model, d.queued.id) for d in batch])
            done = [d.entry_id for d, marker in zip(batch, markers, strict=True) if marker is not None]
            if done:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xack(keys.queue(model), keys.GROUP, *done)
                    pipe.xdel(keys.queue(model), *done)
                    await pipe.execute()
        return [d for d, marker in zip(batch, markers, strict=True) if marker is None]

    async def final_reply(self, model: str, request_id: str) -> Final | None:
        """The stored final reply of a request, if it was settled by a dispatcher."""
        async with converted():
            stored = await self._redis.get(keys.settled(model, request_id))
        if stored is None or text(stored) == CANCELLED:
            return None
        reply = ReplyAdapter.validate_json(stored)
        return reply if isinstance(reply, Finished | Failed) else None

    async def consumers(self, model: str) -> dict[str, int]:
        """The model's dispatchers (gateway ids) and how many entries each holds in flight."""
        return (await self.consumers_of([model]))[model]

    async def consumers_of(self, models: Sequence[str]) -> dict[str, dict[str, int]]:
        """``consumers`` of several models, in one round trip."""
        if not models:
            return {}
        async with converted(), self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.xinfo_consumers(keys.queue(model), keys.GROUP)
            replies = await pipe.execute(raise_on_error=False)
        return {model: _consumers(reply) for model, reply in zip(models, replies, strict=True)}

    async def take_over(
        self,
        model: str,
        consumer: str,
        new_owner: str,
        count: int = 100,
        *,
        min_idle_s: float = 0.0,
        skip: Collection[str] = (),
    ) -> list[Delivery]:
        """Claim up to ``count`` entries that ``consumer`` holds in flight and has not touched for ``min_idle_s``
        (a dead consumer's, or this replica's own strays), except the entry ids in ``skip``."""
        min_idle_ms = int(min_idle_s * 1000)
        async with converted():
            pending = await self._redis.xpending_range(
                keys.queue(model), keys.GROUP, min="-", max="+", count=count, consumername=consumer, idle=min_idle_ms
            )
            ids: list[int | bytes | str | memoryview[int]] = [
                p["message_id"] for p in pending if text(cast(bytes, p["message_id"])) not in skip
            ]
            response = (
                await self._redis.xclaim(keys.queue(model), keys.GROUP, new_owner, min_idle_ms, ids) if ids else []
            )
        claimed = cast(list[tuple[bytes, dict[bytes, bytes] | None]], response)
        taken = [
            _delivery(text(entry_id), fields.get(b"r", b""), fields.get(b"i", b""))
            for entry_id, fields in claimed
            if fields  # an entry deleted meanwhile comes back without fields
        ]
        await self._fail_unreadable(model, [t for t in taken if isinstance(t, Unreadable)])
        return [t for t in taken if isinstance(t, Delivery)]

    async def forget_consumer(self, model: str, consumer: str) -> None:
        async with converted():
            await self._redis.xgroup_delconsumer(keys.queue(model), keys.GROUP, consumer)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def load(self, model: str) -> Load:
        return (await self.loads([model]))[model]

    async def loads(self, models: Sequence[str]) -> dict[str, Load]:
        """Queued and in-flight requests, and seconds since the last activity, of every model in ``models``, in one
        round trip. A model seen for the first time (or after Redis lost its data) counts as active now: idleness
        is never assumed, so a gateway that starts, or restarts, changes no replica count."""
        if not models:
            return {}
        async with converted(), self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for model in models:
                pipe.xlen(keys.queue(model))
                pipe.get(keys.activity(model))
                pipe.xpending(keys.queue(model), keys.GROUP)
            now, *replies = await pipe.execute(raise_on_error=False)
            if isinstance(now, Exception):
                raise now
            now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            loads = {m: _load(now_ms, *replies[3 * i : 3 * i + 3]) for i, m in enumerate(models)}
            unseen = [m for m, load in loads.items() if load.idle_for_s is None]
            for model in unseen:
                pipe.set(keys.activity(model), now_ms, nx=True)
            if unseen:
                await pipe.execute()
        return {m: load if load.idle_for_s is not None else replace(load, idle_for_s=0.0) for m, load in loads.items()}


def _load(now_ms: int, length: object, activity: object, pending: object) -> Load:
    """One model's ``Load`` from its pipelined replies (``idle_for_s`` None: no activity recorded yet)."""
    for reply in (length, activity):
        if isinstance(reply, Exception):
            raise reply
    if isinstance(pending, ResponseError) and "NOGROUP" in str(pending):  # nothing was ever dispatched
        pending = None
    elif isinstance(pending, Exception):
        raise pending
    in_flight = int(cast(dict[str, int], pending)["pending"]) if pending else 0
    idle = None if activity is None else max(0.0, (now_ms - int(cast(bytes, activity))) / 1000)
    return Load(queued=max(0, int(cast(int, length)) - in_flight), in_flight=in_flight, idle_for_s=idle)


def _consumers(reply: object) -> dict[str, int]:
    """An ``XINFO CONSUMERS`` reply as {consumer: entries pending}; none for a model without a stream or group."""
    if isinstance(reply, ResponseError) and ("NOGROUP" in str(reply) or "no such key" in str(reply)):
        return {}
    infos = cast(list[dict[str, object]], _raised(reply))
    return {text(cast(bytes, info["name"])): int(cast(int, info["pending"])) for info in infos}


def _raised(reply: object) -> object:
    """A pipelined reply, or the error it is raised (as ``QueueUnavailable``, logged)."""
    if isinstance(reply, RedisError):
        raise unavailable(reply) from reply
    return reply


def _delivery(entry_id: str, payload: bytes, request_id: bytes) -> Delivery | Unreadable:
    """The entry as a ``Delivery``, or as ``Unreadable`` if it does not read back as a request."""
    try:
        return Delivery(entry_id, QueuedRequest.model_validate_json(payload))
    except ValidationError as exc:
        return _unreadable(entry_id, payload, request_id, exc.errors(include_input=False)[0]["msg"])


def _unreadable(entry_id: str, payload: bytes, request_id: bytes, reason: str) -> Unreadable:
    """What can be made out of an entry that does not read as a request: its request's id (the entry's ``i``
    field, else the payload's) and reply channel. The standard library's decoder reads about 1,000 levels, the
    request reader 200, so these usually can be."""
    fields: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        fields = json.loads(payload)
    fields = fields if isinstance(fields, dict) else {}
    request = fields.get("request")
    found_id = request.get("id") if isinstance(request, dict) else None
    reply_to = fields.get("reply_to")
    return Unreadable(
        entry_id,
        request_id=request_id.decode(errors="replace") or (found_id if isinstance(found_id, str) else ""),
        reply_to=reply_to if isinstance(reply_to, str) else "",
        reason=reason,
    )


def _unreadable_reply(entry: Unreadable) -> Failed:
    return Failed(id=entry.request_id, status=400, message=UNREADABLE_MESSAGE)


def _waited(batch: Sequence[Delivery], fill_s: float) -> bool:
    """Whether the oldest request read has been queued for ``fill_s`` already (by its gateway's clock)."""
    return time.time() - min(d.queued.accepted_at for d in batch) >= fill_s
