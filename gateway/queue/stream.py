"""The durable request queue: one Redis Stream per model, read through one consumer group by every replica.

A client request is stored once: its prompts in one body (``keys.body``), one entry per choice referring to it
(``QueuedEntry``), charged to the model's and its API key's accounts (``gateway.queue.budget``) in the same script; the
last choice's settle deletes the body and releases the charges. (On a Redis Cluster the key's account is in another
slot: its charge is a step of its own, before the enqueue and after the settle, ``gateway.queue.keycharges``.)

Life of an entry: ``enqueue`` (XADD) -> a dispatcher's ``read`` (XREADGROUP: now pending, i.e. in flight)
-> ``settle`` (final reply stored and published, entry acked and deleted) or ``requeue`` (a fresh entry with
attempt + 1, old one deleted) or ``cancel`` (the client gave up). Every multi-key step is one Lua script, so a
request is answered at most once however its deliveries race (the scripts: ``gateway.queue.scripts``). Redis
errors become ``QueueUnavailable`` here.

A read never raises for what an entry holds: an entry that does not read back as a request (``Unreadable``: its
``q``, its inline ``r`` or the prompt of its body nested past the reader's limit by a gateway that did not bound it,
or not a request at all) is settled as failed (400), for its own request only, by whichever read finds it (a
dispatcher's, or the janitor's take-over: ``claimed``), through the settle that releases its body and charges;
each choice of a request whose prompt does not parse is failed so as it is read. The entries read with it go on
as usual.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

import wire
from gateway.errors import KeyQuotaExceeded, NotReplicated, QueueFull
from gateway.queue import scripts
from gateway.queue.budget import Account
from gateway.queue.fence import Fenced
from gateway.queue.keycharges import KeyCharges, charge_of
from gateway.queue.signals import WorkSignals
from gateway.queue.signals import message as work_message
from gateway.queue.upstream import UpstreamRequest
from gateway.relay.messages import Failed, Final, Finished, ReplyAdapter
from gateway.store import keys
from gateway.store.connection import Throttle, converted, text, unavailable
from gateway.store.pipelining import Call, Coalesced
from gateway.store.replication import scripts_then_wait
from wire.redis_url import RedisClient

log = logging.getLogger("kaltstart.queue")
#: A refusal for too few replicas is logged at most once a second.
_log_unreplicated = Throttle(1.0)

#: How long a settled marker outlives its request: long enough to suppress any late duplicate.
SETTLED_TTL_MS = 3_600_000
CANCELLED = "cancelled"
#: The answer to a request whose entry cannot be read back (``Unreadable``).
UNREADABLE_MESSAGE = "The request could not be read back from the queue (it nests too deeply or is malformed)."
#: A body (and its charges) outlives its request's deadline by this long before it lapses: the deadline's own
#: cancellation normally deletes it first.
BODY_GRACE_S = 60.0
#: What a refusal for a full account tells the client to wait.
FULL_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ReplicaWait:
    """``WAIT replicas timeout_ms`` after every pipeline of enqueues (``KALTSTART_REDIS_WAIT_REPLICAS``): a request
    counts as accepted only once that many replicas hold it, so a failover cannot lose it."""

    replicas: int
    timeout_ms: int


@dataclass(frozen=True)
class _Unreplicated:
    """An enqueue's reply (its entry ids) that fewer replicas than asked acknowledged in time."""

    entry_ids: tuple[str, ...]


@dataclass(frozen=True)
class Held:
    """Where a request's body and charges are kept: its body's id (empty for an entry that carries its request
    inline, as an older gateway wrote them) and its API key's account (empty: no key)."""

    body: str = ""
    account: str = ""


INLINE = Held()

#: What the queue carries to a replica: a request for our runtime, or one for an OpenAI-compatible upstream.
Payload = wire.GenerationRequest | UpstreamRequest
_UPSTREAM_PREFIX = b'{"kind":"upstream"'


def _seed(request: Payload) -> int | None:
    return request.seed if isinstance(request, UpstreamRequest) else request.params.seed


def _with_id(request: Payload, request_id: str, seed: int | None) -> Payload:
    """``request`` as choice ``request_id`` with ``seed`` (an upstream request has one choice, and no seed)."""
    if isinstance(request, UpstreamRequest):
        return request.model_copy(update={"id": request_id})
    params = request.params.model_copy(update={"seed": seed})
    return request.model_copy(update={"id": request_id, "params": params})


class QueuedRequest(BaseModel):
    """One choice of a request as the gateway handles it (an older gateway stored it whole in its entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    request: Payload
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
    #: Its request's stored body ('' for an inline entry), the prompt of it this choice answers, and the API key's
    #: account charged for it.
    body: str = ""
    prompt: int = 0
    account: str = ""

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def held(self) -> Held:
        return Held(self.body, self.account)

    def entry(self) -> QueuedEntry:
        """What its stream entry holds beside the body's reference."""
        return QueuedEntry(
            id=self.id,
            seed=_seed(self.request),
            reply_to=self.reply_to,
            accepted_at=self.accepted_at,
            attempt=self.attempt,
            failures=self.failures,
            gateway=self.gateway,
            body=self.body,
            prompt=self.prompt,
            account=self.account,
        )


class QueuedEntry(BaseModel):
    """What one stream entry holds (field ``q``): what differs between the choices of one prompt
    (``choices.fan_out``: their id and seed), the other ``QueuedRequest`` fields, and the reference to its body
    (also in the entry's fields ``b`` and ``p``, for the scripts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    seed: int | None
    reply_to: str
    accepted_at: float
    attempt: int = 1
    failures: int = 0
    gateway: str = ""
    body: str
    prompt: int
    account: str = ""

    def queued(self, prompt: Payload) -> QueuedRequest:
        """The choice, its request rebuilt from the body's ``prompt`` (choice 0's request of that prompt)."""
        return QueuedRequest(
            request=_with_id(prompt, self.id, self.seed),
            reply_to=self.reply_to,
            accepted_at=self.accepted_at,
            attempt=self.attempt,
            failures=self.failures,
            gateway=self.gateway,
            body=self.body,
            prompt=self.prompt,
            account=self.account,
        )


@dataclass(frozen=True)
class Stored:
    """One client request as it is enqueued: its body (one ``GenerationRequest`` per prompt, ``id``: the body's) and
    its choices (``prompt``: index into ``prompts``), charged to ``account`` if not None."""

    id: str
    prompts: tuple[Payload, ...]
    choices: tuple[QueuedRequest, ...]
    account: Account | None = None

    @functools.cached_property
    def prompt_texts(self) -> tuple[str, ...]:
        """The prompts as stored (JSON), serialised once."""
        return tuple(p.model_dump_json() for p in self.prompts)

    @functools.cached_property
    def entry_texts(self) -> tuple[str, ...]:
        return tuple(c.entry().model_dump_json() for c in self.choices)

    @property
    def size(self) -> int:
        """The bytes it is charged: its prompts once, and its entries."""
        return sum(map(_length, self.prompt_texts)) + sum(map(_length, self.entry_texts))

    @property
    def choice_bytes(self) -> int:
        """Its prompts' bytes as many times as each has choices: what its batches send to a runtime."""
        lengths = [_length(t) for t in self.prompt_texts]
        return sum(lengths[c.prompt] for c in self.choices)

    @property
    def held(self) -> Held:
        return Held(self.id, self.account.id if self.account else "")

    @classmethod
    def of(cls, choices: Sequence[QueuedRequest], per_prompt: int, account: Account | None = None) -> Stored:
        """``choices`` in ``choices.fan_out``'s order (``per_prompt`` a prompt): the choices of one prompt differ
        only in their id and seed, so choice 0's request of each prompt is what the body stores."""
        body = choices[0].id
        prompts = tuple(c.request for c in choices[::per_prompt])
        update = {"body": body, "account": account.id if account else ""}
        stored = tuple(c.model_copy(update=update | {"prompt": i // per_prompt}) for i, c in enumerate(choices))
        return cls(body, prompts, stored, account)


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
    """A stream entry that does not read back as a request (its ``q`` or inline ``r`` does not parse, or the prompt
    it refers to in its body does not), and what could be made out of it: its request's id and reply channel (""
    where not even those), and where its body and charges are kept (released by its settle)."""

    entry_id: str
    request_id: str
    reply_to: str
    #: Why it could not be read (for the log; never shown to a client).
    reason: str
    held: Held = INLINE


@dataclass(frozen=True)
class Lapsed:
    """An entry whose body is gone (its request outlived its deadline unsettled), with a stand-in to settle it."""

    delivery: Delivery


#: What a read makes of an entry.
Taken = Delivery | Unreadable | Lapsed
#: A prompt of a body as read: the request, why it did not parse (str), or None if the body is gone.
Prompt = Payload | str | None


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
    def __init__(
        self,
        *,
        redis: RedisClient,
        max_queue_per_model: int,
        work: WorkSignals | None = None,
        max_bytes_per_model: int = 64 << 20,
        hold_s: float = 600.0 + BODY_GRACE_S,
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        """``work``: told of every entry this queue adds (and published for the other gateway replicas).
        ``max_bytes_per_model``: the model's account's limit; ``hold_s``: how long after its enqueue a request's
        body and charges lapse if nobody settled it (its deadline and ``BODY_GRACE_S``); ``replica_wait``: how many
        replicas must hold an enqueue before it counts (None: none waited for)."""
        self._redis = redis
        self._max = max_queue_per_model
        self._max_bytes = max_bytes_per_model
        self._ttl_ms = int(hold_s * 1000)
        self.work = work if work is not None else WorkSignals("")
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._settle = redis.register_script(scripts.SETTLE)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._read_script = redis.register_script(scripts.READ)
        self._replica_wait = replica_wait if replica_wait is not None and replica_wait.replicas > 0 else None
        #: On a Redis Cluster, API keys' charges as steps of their own (the key's account is in another slot).
        self._key_charges = KeyCharges(redis, self._pipelined) if isinstance(redis, RedisCluster) else None
        self._coalesced_enqueue = Coalesced(lambda calls: self._pipelined(self._enqueue, calls, self._replica_wait))

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
        """Queue a request of one choice: its entry id, or ``Fenced`` while a scale-down of the model is being
        written."""
        entries = await self.enqueue_stored(model, Stored.of([queued], 1))
        return entries if isinstance(entries, Fenced) else entries[0]

    async def enqueue_stored(self, model: str, stored: Stored) -> list[str] | Fenced:
        """Queue a request: its body once and an entry per choice, charged to the model's account and its key's
        (all or nothing). The entry ids, in order, or ``Fenced``. Raises ``QueueFull`` (the model's queue or
        account is full) or ``KeyQuotaExceeded`` (the key's account is)."""
        prompts, entries, account = stored.prompt_texts, stored.entry_texts, stored.account
        limits = (account.max_requests, account.max_entries, account.max_bytes) if account else (0, 0, 0)
        charged = await self._charge_key(model, stored)
        script_keys = [
            keys.queue(model), keys.activity(model), keys.fence(model), keys.body(model, stored.id),
            keys.model_held(model), keys.model_usage(model),
            *([keys.key_held(account.id), keys.key_usage(account.id)] if account and not charged else []),
        ]  # fmt: skip
        args: list[str | int] = [
            self._max, self._max_bytes, *limits, self._ttl_ms, stored.id, stored.size, len(prompts),
            *self._work_message(model), *prompts,
        ]  # fmt: skip
        for choice, entry in zip(stored.choices, entries, strict=True):
            args += [entry, choice.prompt, choice.id]
        reply: object = None
        try:
            async with converted():
                reply = await self._coalesced_enqueue(script_keys, args)
        finally:
            if charged and not isinstance(reply, list):  # not queued (or not replicated): the key's charge goes too
                await self._release_keys([(charged, stored.held)])
        if isinstance(reply, int):
            return Fenced(seconds_left=reply / 1000)
        if isinstance(reply, bytes):
            raise _refusal(text(reply), model, account)
        if isinstance(reply, _Unreplicated):  # its entries exist: the caller withdraws them (cancels, as a client
            raise NotReplicated(reply.entry_ids)  # that left), since a dispatcher may have read them already
        self.work.notify(model)
        return [text(entry_id) for entry_id in cast(list[bytes], reply)]

    async def _charge_key(self, model: str, stored: Stored) -> str | None:
        """On a Redis Cluster, charge the request's API key first, as a step of its own (``keycharges``): the charge,
        or None if there is none to take here (one Redis: the enqueue script takes it). Raises
        ``KeyQuotaExceeded`` if the key's account is full."""
        if self._key_charges is None or stored.account is None:
            return None
        charge = charge_of(stored.id, len(stored.choices), stored.size)
        refused = await self._key_charges.charge(
            stored.account, charge, entries=len(stored.choices), size=stored.size, ttl_ms=self._ttl_ms
        )
        if refused is not None:
            raise _refusal(refused, model, stored.account)
        return charge

    async def _release_keys(self, released: Sequence[tuple[object, Held]]) -> None:
        """On a Redis Cluster, release the key's charge of each request whose model charge the settle script
        released (its reply: the charge, a string), or that was not queued after all."""
        if self._key_charges is None:
            return
        charges = [(held.account, text(r)) for r, held in released if held.account and isinstance(r, bytes | str)]
        await self._key_charges.release(charges)

    def _settle_keys(self, model: str, request_id: str, held: Held) -> list[str]:
        """The settle script's keys: the body's and the accounts' too for a request stored with a body (the key's
        account only on one Redis: on a Redis Cluster it is released as a step of its own, ``_release_keys``)."""
        settle = [keys.queue(model), keys.settled(model, request_id), keys.activity(model)]
        if held.body:
            settle += [keys.body(model, held.body), keys.model_held(model), keys.model_usage(model)]
            if held.account and self._key_charges is None:
                settle += [keys.key_held(held.account), keys.key_usage(held.account)]
        return settle

    def _work_message(self, model: str) -> tuple[str, str]:
        """The work signal to publish with an entry added now (``gateway.queue.signals``)."""
        return keys.WORK, work_message(self.work.gateway_id, model, taken=self.work.taken_here(model))

    async def backlog(self, model: str) -> None:
        """A dispatcher here read less than the queue holds: wake the other gateways' dispatchers to help."""
        async with converted():
            await self._redis.publish(keys.WORK, work_message(self.work.gateway_id, model, taken=False))

    async def put_back(self, model: str, batch: Sequence[Delivery]) -> None:
        """Return read entries to the queue unchanged (this dispatcher is stopping before it could send them)."""
        for delivery in batch:
            await self.requeue(model, delivery, failed=False)

    async def read(self, model: str, consumer: str, count: int) -> Read:
        """Read up to ``count`` new entries without blocking, those of settled requests dropped (one round trip).
        (To wait for work, wait on ``work.event(model)``, cleared before this read; the batching window is the
        dispatcher's: ``gateway.dispatch.window``.)"""
        async with converted():
            response = await self._read_script(
                keys=[keys.queue(model)],
                args=[keys.GROUP, consumer, count, keys.settled(model, ""), keys.body(model, "")],
            )
        if response == -1:
            await self.prepare(model)  # Redis lost its data (restart without persistence, flush)
            return Read([], drained=False)
        read, *flat = cast(list[bytes | int], response)
        prompts: dict[tuple[str, int], Prompt] = {}
        taken: list[Taken] = []
        unchecked: set[str] = set()
        for at in range(0, len(flat), 5):
            entry_id, request_id = text(cast(bytes, flat[at])), cast(bytes, flat[at + 3])
            payload, prompt, body = cast(bytes, flat[at + 1]), flat[at + 2], cast(bytes, flat[at + 4])
            taken.append(_read_entry(entry_id, payload, prompt, request_id, body, prompts))
            if not request_id:  # added by a gateway older than the request id field: checked here
                unchecked.add(entry_id)
        ready = await self._fail_untaken(model, taken)
        deliveries = [d for d in ready if d.entry_id not in unchecked]
        if unchecked:
            deliveries += await self._drop_settled(model, [d for d in ready if d.entry_id in unchecked])
        return Read(deliveries, drained=cast(int, read) < count)

    async def _fail_untaken(self, model: str, taken: Sequence[Taken]) -> list[Delivery]:
        """Settle what was read but cannot be dispatched (unreadable entries, lapsed bodies) as failed; the
        deliveries of the rest."""
        await self._fail_unreadable(model, [t for t in taken if isinstance(t, Unreadable)])
        if lapsed := [t.delivery for t in taken if isinstance(t, Lapsed)]:
            await self._fail_lapsed(model, lapsed)
        return [t for t in taken if isinstance(t, Delivery)]

    async def _fail_lapsed(self, model: str, lapsed: Sequence[Delivery]) -> None:
        """Entries whose body lapsed (their request outlived its deadline unsettled): failed, never sent."""
        failed = [Settlement(d, Failed(id=d.queued.id, status=504, message=LAPSED)) for d in lapsed]
        await self.settle_many(model, failed)

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
                self._settle_keys(model, e.request_id, e.held),
                [e.entry_id, keys.GROUP, SETTLED_TTL_MS, e.reply_to, _unreadable_reply(e).model_dump_json()],
            )
            for e in known
        ]
        replies = await self._pipelined(self._settle, calls) if calls else []
        await self._release_keys(list(zip(replies, [e.held for e in known], strict=True)))
        for reply in replies:
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
                self._settle_keys(model, s.delivery.queued.id, s.delivery.queued.held),
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
        replies = await self._pipelined(self._settle, calls)
        await self._release_keys([(r, s.delivery.queued.held) for r, s in zip(replies, settlements, strict=True)])
        return [bool(_raised(first)) for first in replies]

    async def _pipelined(
        self, script: AsyncScript, calls: Sequence[Call], wait: ReplicaWait | None = None
    ) -> list[object]:
        """Run ``script`` once per call in one pipeline; a failed call's reply is its exception. By the script's
        SHA: given a ``Script`` object, redis-py checks that it exists (a round trip of its own) on every such
        pipeline. A missing script (Redis restarted, or a replica just promoted: replicas do not share the script
        cache) fails every call, none ran: it is loaded and they go again. ``wait``: the pipeline ends with a
        ``WAIT`` (on the same connection, so for these writes), and a reply of entry ids that fewer replicas than
        asked acknowledged comes back as ``_Unreplicated``."""
        async with converted():
            replies = await self._run_pipelined(script, calls, wait)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                await self._redis.script_load(script.script)
                replies = await self._run_pipelined(script, calls, wait)
        return replies

    async def _run_pipelined(
        self, script: AsyncScript, calls: Sequence[Call], wait: ReplicaWait | None
    ) -> list[object]:
        if wait is not None and isinstance(self._redis, RedisCluster):  # each node's WAIT on its own connection
            replies, acked = await scripts_then_wait(self._redis, script.sha, calls, wait.replicas, wait.timeout_ms)
            return [_replicated(reply, ack, wait) for reply, ack in zip(replies, acked, strict=True)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for script_keys, args in calls:
                pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            if wait is not None:
                pipe.wait(wait.replicas, wait.timeout_ms)
            replies = cast(list[object], await pipe.execute(raise_on_error=False))
        if wait is None:
            return replies
        ack = replies.pop()
        return [_replicated(reply, ack, wait) for reply in replies]

    async def cancel(self, model: str, request_id: str, entry_id: str, held: Held = INLINE) -> bool:
        """The client stopped waiting: make sure the request is never dispatched or answered, and announce it
        (``keys.CANCELS``) so that whichever dispatcher has it in a running batch tells its runtime to stop.
        False if a final reply got there first."""
        notice = CancelNotice(model=model, id=request_id).model_dump_json()
        async with converted():
            first = await self._settle(
                keys=self._settle_keys(model, request_id, held),
                args=[entry_id, keys.GROUP, SETTLED_TTL_MS, keys.CANCELS, CANCELLED, notice],
            )
        await self._release_keys([(first, held)])
        return bool(first)

    async def requeue(self, model: str, delivery: Delivery, *, failed: bool = True) -> bool:
        """Put a request back at the end of the queue as its next attempt, counting a failure if its replica
        ``failed`` (not if the gateway dispatching it is shutting down, or lost Redis)."""
        queued = delivery.queued
        again = queued.model_copy(update={"attempt": queued.attempt + 1, "failures": queued.failures + int(failed)})
        fields: list[str | int] = ["r", again.model_dump_json()]
        if again.body:
            fields = ["q", again.entry().model_dump_json(), "b", again.body, "p", again.prompt]
        async with converted():
            entry = await self._requeue(
                keys=[keys.queue(model), keys.settled(model, delivery.queued.id)],
                args=[
                    delivery.entry_id, keys.GROUP, queued.id, *self._work_message(model),
                    *fields,
                ],
            )  # fmt: skip
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

    async def consumers_of(self, models: Sequence[str]) -> dict[str, dict[str, int]]:
        """The dispatchers (gateway ids) of each model of ``models`` and how many entries each holds in flight, in
        one round trip."""
        if not models:
            return {}
        async with converted(), self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.xinfo_consumers(keys.queue(model), keys.GROUP)
            replies = await pipe.execute(raise_on_error=False)
        return {model: _consumers(reply) for model, reply in zip(models, replies, strict=True)}

    async def claimed(self, model: str, claimed: Sequence[tuple[str, dict[bytes, bytes]]]) -> list[Delivery]:
        """The deliveries of entries claimed from another consumer (``gateway.queue.recovery.Takeover``; an entry
        deleted meanwhile comes back without fields, and is not here); their bodies' prompts read in one round
        trip. What cannot be dispatched is settled as failed, as a read does."""
        async with converted():
            taken = await self._claimed(model, claimed)
        return await self._fail_untaken(model, taken)

    async def _claimed(self, model: str, claimed: Sequence[tuple[str, dict[bytes, bytes]]]) -> list[Taken]:
        """What claimed entries are."""
        entries = {
            i: _entry(i, f.get(b"q", b""), f.get(b"i", b""), f.get(b"b", b"")) for i, f in claimed if b"r" not in f
        }
        wanted = sorted({(e.body, e.prompt) for e in entries.values() if isinstance(e, QueuedEntry)})
        async with self._redis.pipeline(transaction=False) as pipe:
            for body, index in wanted:
                pipe.hget(keys.body(model, body), str(index))
            found = await pipe.execute() if wanted else []
        prompts = {at: None if raw is None else _prompt(raw) for at, raw in zip(wanted, found, strict=True)}
        taken: list[Taken] = []
        for entry_id, fields in claimed:
            entry = entries.get(entry_id)
            if entry is None:  # an older gateway's entry: the request inline
                taken.append(_delivery(entry_id, fields[b"r"], fields.get(b"i", b"")))
            elif isinstance(entry, Unreadable):
                taken.append(entry)
            else:
                taken.append(_choice(entry_id, entry, prompts[(entry.body, entry.prompt)]))
        return taken

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
            now_ms, loads = await self._read_loads(pipe, models)
            unseen = [m for m, load in loads.items() if load.idle_for_s is None]
            for model in unseen:
                pipe.set(keys.activity(model), now_ms, nx=True)
            if unseen:
                await pipe.execute()
        return {m: load if load.idle_for_s is not None else replace(load, idle_for_s=0.0) for m, load in loads.items()}

    async def peek(self, models: Sequence[str]) -> dict[str, Load]:
        """``loads`` for a reader that must change nothing (``python -m gateway status``): one round trip, no write;
        a model never used keeps ``idle_for_s`` None."""
        if not models:
            return {}
        async with converted(), self._redis.pipeline(transaction=False) as pipe:
            return (await self._read_loads(pipe, models))[1]

    @staticmethod
    async def _read_loads(pipe: Pipeline | ClusterPipeline, models: Sequence[str]) -> tuple[int, dict[str, Load]]:
        """The Redis server's time in ms, and each model's ``Load`` (``idle_for_s`` None: never used)."""
        pipe.execute_command("TIME")  # not ``pipe.time()``, which a cluster pipeline refuses (any node's clock)
        for model in models:
            pipe.xlen(keys.queue(model))
            pipe.get(keys.activity(model))
            pipe.xpending(keys.queue(model), keys.GROUP)
        now, *replies = await pipe.execute(raise_on_error=False)
        if isinstance(now, Exception):
            raise now
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        return now_ms, {m: _load(now_ms, *replies[3 * i : 3 * i + 3]) for i, m in enumerate(models)}


def _replicated(reply: object, acked: object, wait: ReplicaWait) -> object:
    """An enqueue's ``reply``, or ``_Unreplicated`` if it added entries that fewer than ``wait.replicas`` replicas
    acknowledged (``acked``: ``WAIT``'s reply, or the exception it failed with)."""
    if not isinstance(reply, list) or (isinstance(acked, int) and acked >= wait.replicas):
        return reply
    if _log_unreplicated():
        log.warning("enqueues reached %r of %d replicas within %d ms: refused", acked, wait.replicas, wait.timeout_ms)
    return _Unreplicated(tuple(map(text, reply)))


def _length(stored: str) -> int:
    """Bytes of a stored text (its UTF-8)."""
    return len(stored) if stored.isascii() else len(stored.encode())


def _refusal(reason: str, model: str, account: Account | None) -> QueueFull | KeyQuotaExceeded:
    """The error for the enqueue script's refusal ``reason``."""
    if reason == "full":
        return QueueFull(f"Too many requests are queued for model '{model}'; try again later.", retry_after_s=5)
    if reason == "model-bytes":
        message = f"Too many bytes of requests are queued for model '{model}'; try again later."
        return QueueFull(message, retry_after_s=FULL_RETRY_AFTER_S)
    quota = reason.removeprefix("key-")
    limit = {"requests": "requests in progress", "entries": "queued choices", "bytes": "bytes queued"}[quota]
    held = (
        {"requests": account.max_requests, "entries": account.max_entries, "bytes": account.max_bytes}[quota]
        if account
        else 0
    )
    return KeyQuotaExceeded(
        f"This API key has reached its quota of {held} {limit}; try again once some of its requests are answered.",
        quota=quota,
        retry_after_s=FULL_RETRY_AFTER_S,
    )


LAPSED = "The request was not dispatched before its deadline."


def _read_entry(
    entry_id: str,
    payload: bytes,
    prompt: bytes | int,
    request_id: bytes,
    body: bytes,
    prompts: dict[tuple[str, int], Prompt],
) -> Taken:
    """What an entry of the read script's reply is (``prompt``: its prompt's text, 1: as an earlier entry's of this
    read, 0: its body is gone, -1: an older gateway's entry, its request inline in ``payload``; ``body``: its ``b``
    field). ``prompts``: those read so far, parsed once each."""
    if prompt == -1:
        return _delivery(entry_id, payload, request_id)
    entry = _entry(entry_id, payload, request_id, body)
    if isinstance(entry, Unreadable):
        return entry
    at = (entry.body, entry.prompt)
    if isinstance(prompt, bytes):
        prompts[at] = _prompt(prompt)
    elif prompt == 0:
        prompts[at] = None
    return _choice(entry_id, entry, prompts.get(at, "its prompt came with an entry that could not be read"))


def _entry(entry_id: str, payload: bytes, request_id: bytes, body: bytes) -> QueuedEntry | Unreadable:
    """An entry's ``q`` (``payload``), or ``Unreadable`` if it does not parse."""
    try:
        return QueuedEntry.model_validate_json(payload)
    except ValidationError as exc:
        return _unreadable(entry_id, payload, request_id, _reason(exc), body=body)


def _prompt(raw: bytes) -> Payload | str:
    """A prompt from a body, or why it does not parse (nested past the reader's limit by a gateway that did not
    bound it, or not a request at all). An upstream request is dumped with its ``kind`` first."""
    try:
        if raw.startswith(_UPSTREAM_PREFIX):
            return UpstreamRequest.model_validate_json(raw)
        return wire.GenerationRequest.model_validate_json(raw)
    except ValidationError as exc:
        return _reason(exc)


def _choice(entry_id: str, entry: QueuedEntry, prompt: Prompt) -> Taken:
    """The choice ``entry`` stands for, its request rebuilt from its body's ``prompt``."""
    if prompt is None:
        return Lapsed(Delivery(entry_id, _lapsed(entry)))
    if isinstance(prompt, str):
        return Unreadable(
            entry_id, entry.id, entry.reply_to, reason=f"its prompt: {prompt}", held=Held(entry.body, entry.account)
        )
    return Delivery(entry_id, entry.queued(prompt))


def _lapsed(entry: QueuedEntry) -> QueuedRequest:
    """A stand-in for the choice of an entry whose body lapsed, enough to settle it."""
    return QueuedRequest(
        request=wire.GenerationRequest(id=entry.id, prompt=""),
        reply_to=entry.reply_to,
        accepted_at=entry.accepted_at,
        gateway=entry.gateway,
        body=entry.body,
        prompt=entry.prompt,
        account=entry.account,
    )


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
    """An entry with its request inline (``r``, as an older gateway wrote them) as a ``Delivery``, or as
    ``Unreadable`` if it does not read back as a request."""
    try:
        return Delivery(entry_id, QueuedRequest.model_validate_json(payload))
    except ValidationError as exc:
        return _unreadable(entry_id, payload, request_id, _reason(exc))


def _reason(exc: ValidationError) -> str:
    return exc.errors(include_input=False)[0]["msg"]


def _unreadable(entry_id: str, payload: bytes, request_id: bytes, reason: str, body: bytes | None = None) -> Unreadable:
    """What can be made out of an entry that does not read as a request: its request's id (the entry's ``i``
    field, else the payload's) and reply channel, and for an entry that refers to a body (``body``: its ``b``
    field; None: its request inline) the body and the account its ``q`` names. The standard library's decoder
    reads about 1,000 levels, the request reader 200, so these usually can be."""
    fields: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        fields = json.loads(payload)
    fields = fields if isinstance(fields, dict) else {}
    request = fields.get("request") if body is None else fields
    found_id = _string(request.get("id")) if isinstance(request, dict) else ""
    held = INLINE
    if body is not None:
        held = Held(body.decode(errors="replace") or _string(fields.get("body")), _string(fields.get("account")))
    return Unreadable(
        entry_id,
        request_id=request_id.decode(errors="replace") or found_id,
        reply_to=_string(fields.get("reply_to")),
        reason=reason,
        held=held,
    )


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _unreadable_reply(entry: Unreadable) -> Failed:
    return Failed(id=entry.request_id, status=400, message=UNREADABLE_MESSAGE)
