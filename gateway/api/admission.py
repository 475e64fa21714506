"""A request's way through the gateway: admit -> enqueue -> ensure capacity -> await result.

``Admission.submit`` does the first three and hands back a ``Ticket``; the route awaits the ticket and responds.
The handler never calls a runtime itself: whichever replica dispatches the request, its replies come back here
through Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

import wire
from gateway.api.auth import Grant
from gateway.catalog import ModelCatalog
from gateway.errors import (
    ClientGone,
    ColdStartTimeout,
    DeadlineExceeded,
    GenerationFailed,
    InvalidRequest,
    KeyQuotaExceeded,
    NotReplicated,
    PayloadTooLarge,
    QueueUnavailable,
    RequestError,
)
from gateway.metrics import Metrics
from gateway.queue.budget import Account, MemoryGuard
from gateway.queue.fence import FencedDoor
from gateway.queue.stream import INLINE, Held, Payload, QueuedRequest, RequestQueue, Stored
from gateway.queue.upstream import UpstreamRequest
from gateway.relay.messages import BROKEN_STREAM, Answered, AnyReply, Chunk, Dispatched, Failed, Finished, Token
from gateway.relay.transport import ReplyRouter
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.context import ContextLengths
from gateway.settings import ModelSettings, ServerSettings
from gateway.tracing import OFF, Tracing


class Capacity(Protocol):
    """What admission needs of the autoscaler (``gateway.scaling.autoscaler.Scaler``): a model with a request
    queued and no replica wanted gets one now, not at the next tick."""

    async def ensure_capacity(self, model: str, *, recheck: bool = False) -> None: ...


#: A waiting request that has heard nothing on pub/sub for this long reads its stored final reply, in case the
#: subscription dropped it. A backstop, not the normal path.
MISSED_REPLY_CHECK_S = 5.0

#: Takes over the cancellation of a request (model, request id, entry id, body) that could not be written now.
Abandon = Callable[[str, str, str, Held], None]


class Ticket:
    """One accepted request, from the client's side: wait for dispatch, then for tokens and the result."""

    def __init__(
        self,
        *,
        model: ModelSettings,
        request_id: str,
        inbox: asyncio.Queue[AnyReply],
        queue: RequestQueue,
        request_timeout_s: float,
        closer: ExitStack,
        abandon: Abandon,
        retry_after_s: Callable[[], int],
        held: Held = INLINE,
    ) -> None:
        self.model = model
        self.id = request_id
        self.entry_id = ""
        self.held = held
        self._inbox = inbox
        self._queue = queue
        self._closer = closer
        self._abandon = abandon
        self._retry_after_s = retry_after_s
        loop = asyncio.get_running_loop()
        self.arrived = loop.time()
        self._cold_deadline = self.arrived + model.cold_start_timeout_s
        self._deadline = self.arrived + request_timeout_s
        self._early: list[AnyReply] = []
        self._settled = False
        self._emitted = ""
        self._emitted_entries = 0
        self._emitted_calls = 0
        self._attempts: dict[int, tuple[str, int, int]] = {}  # attempt -> its text, entries and calls so far
        #: Once dispatched: how long it waited in the queue, and of that for a cold start (ms; None before).
        self.queue_ms: float | None = None
        self.cold_start_ms: float | None = None

    async def dispatched(self) -> None:
        """Wait until a replica took the request; 503 + Retry-After if none did within the cold-start timeout."""
        while True:
            try:
                reply = await self._next(min(self._cold_deadline, self._deadline))
            except TimeoutError:
                if await self._give_up():
                    raise ColdStartTimeout(
                        f"Model '{self.model.name}' did not become ready in time; try again shortly.",
                        retry_after_s=self._retry_after_s(),
                    ) from None
                continue  # a final reply beat us to it: read it
            self._early.append(reply)
            self.queue_ms = (asyncio.get_running_loop().time() - self.arrived) * 1000
            self.cold_start_ms = float(reply.cold_start_ms) if isinstance(reply, Dispatched) else 0.0
            return

    async def stream(self) -> AsyncIterator[Delta | wire.FinishEvent]:
        """New text (and its log-probability entries) as it is generated, then the finished result. Raises the
        request's error, if any."""
        while True:
            reply = await self._reply()
            if isinstance(reply, Token):
                if delta := self._new_delta(reply):
                    yield delta
            elif isinstance(reply, Finished):
                self._settled = True
                if rest := self._rest(reply.result):
                    yield rest
                yield reply.result
                return
            elif isinstance(reply, Failed):
                self._settled = True
                raise _failure(reply)

    async def relayed(self) -> AsyncIterator[Chunk | Answered]:
        """An upstream's answer (``protocol = openai``): its streamed events as they come, then its ``Answered``.
        Raises the request's error, if any. A dispatcher never retries an upstream request once its events were
        relayed; should another attempt's events come all the same (a gateway that died mid-stream, its request
        taken over by another), the stream ends with an error rather than going on with a second answer."""
        streamed: int | None = None  # the attempt whose events the client got
        while True:
            reply = await self._reply()
            if isinstance(reply, Chunk):
                if streamed is not None and reply.attempt != streamed:
                    raise GenerationFailed(BROKEN_STREAM)
                streamed = reply.attempt
                yield reply
            elif isinstance(reply, Answered):
                self._settled = True
                yield reply
                return
            elif isinstance(reply, Failed):
                self._settled = True
                raise _failure(reply)

    async def _reply(self) -> AnyReply:
        """The next reply (one that came with the dispatch first); 504 once the request's deadline passed."""
        while True:
            try:
                return self._early.pop(0) if self._early else await self._next(self._deadline)
            except TimeoutError:
                if await self._give_up():
                    raise DeadlineExceeded("The request did not finish in time.") from None

    async def result(self) -> wire.FinishEvent:
        async for item in self.stream():
            if isinstance(item, wire.FinishEvent):
                return item
        raise GenerationFailed("The model returned no result.")

    async def close(self) -> None:
        """Stop waiting. A request that was not answered is cancelled so that no replica works on it; while Redis
        is unreachable the cancellation is handed on (``abandon``) to be written once it is back."""
        try:
            if not self._settled:
                await self._give_up()
        except QueueUnavailable:
            self._abandon(self.model.name, self.id, self.entry_id, self.held)
        finally:
            self._closer.close()

    def _new_delta(self, token: Token) -> Delta | None:
        # A redelivered request generates again from its first token (with the same seed): skip what the
        # client already has, text, entries and tool calls alike.
        text, entries, calls = self._attempts.get(token.attempt, ("", 0, 0))
        text += token.text
        self._attempts[token.attempt] = (text, entries + len(token.logprobs), calls + len(token.tool_calls))
        new_text = text[len(self._emitted) :]
        new_entries = token.logprobs[max(0, self._emitted_entries - entries) :]
        new_calls = token.tool_calls[max(0, self._emitted_calls - calls) :]
        self._emitted = max(self._emitted, text, key=len)
        self._emitted_entries += len(new_entries)
        self._emitted_calls += len(new_calls)
        return Delta(new_text, new_entries, new_calls) if new_text or new_entries or new_calls else None

    def _rest(self, result: wire.FinishEvent) -> Delta | None:
        """What the finished result holds beyond what was streamed (tokens lost on the way, or not streamed)."""
        text, entries = result.text[len(self._emitted) :], (result.logprobs or ())[self._emitted_entries :]
        calls = result.tool_calls[self._emitted_calls :]
        self._emitted += text
        self._emitted_entries += len(entries)
        self._emitted_calls += len(calls)
        return Delta(text, entries, calls) if text or entries or calls else None

    async def _next(self, deadline: float) -> AnyReply:
        if not self._inbox.empty():  # a reply already here is the answer, even past the deadline
            return self._inbox.get_nowait()
        loop = asyncio.get_running_loop()
        while (left := deadline - loop.time()) > 0:
            try:
                return await asyncio.wait_for(self._inbox.get(), timeout=min(left, MISSED_REPLY_CHECK_S))
            except TimeoutError:
                stored = await self._stored_reply()
                if stored is not None:
                    return stored
        raise TimeoutError

    async def _stored_reply(self) -> AnyReply | None:
        """The backstop read; an unreachable Redis is no reason to stop waiting (the reply is stored there and
        is read once Redis is back, or the deadline ends the wait)."""
        try:
            return await self._queue.final_reply(self.model.name, self.id)
        except QueueUnavailable:
            return None

    async def _give_up(self) -> bool:
        """Cancel the request unless a final reply was stored first; True if it is now cancelled."""
        if await self._queue.cancel(self.model.name, self.id, self.entry_id, self.held):
            self._settled = True
            return True
        stored = await self._queue.final_reply(self.model.name, self.id)
        if stored is not None:
            self._inbox.put_nowait(stored)
        return False


async def _withdraw(tickets: Sequence[Ticket], entry_ids: Sequence[str]) -> None:
    """Cancel a request that is refused although its entries were written (``NotReplicated``), as for a client that
    left: no replica works on it, and an answer that got there first is dropped with the ticket, so the client
    hears only the refusal."""
    for ticket, entry_id in zip(tickets, entry_ids, strict=True):
        ticket.entry_id = entry_id
        await ticket.close()


@dataclass(frozen=True)
class Delta:
    """New text of a request, the log-probability entries of the tokens it completes, and tool calls completed."""

    text: str
    logprobs: tuple[wire.TokenLogprob, ...] = ()
    tool_calls: tuple[wire.ToolCall, ...] = ()


def _failure(reply: Failed) -> RequestError:
    if reply.status == 400:
        return InvalidRequest(reply.message)
    return GenerationFailed(reply.message)


class Admission:
    def __init__(
        self,
        *,
        settings: ServerSettings,
        catalog: ModelCatalog,
        queue: RequestQueue,
        replies: ReplyRouter,
        door: FencedDoor,
        scaler: Capacity,
        metrics: Metrics,
        abandon: Abandon,
        limits: ContextLengths,
        cold_starts: ColdStarts,
        memory: MemoryGuard | None = None,
        quota: Account | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        """``memory``: refuses requests while Redis is near its maxmemory; ``quota``: every key's limits where its
        key-file line sets none (its ``id`` and ``label`` unused); ``tracing``: where the admission spans go."""
        self.settings = settings
        self.tracing = tracing
        self.cold_starts = cold_starts
        self._abandon = abandon
        self._limits = limits
        self.catalog = catalog
        self._queue = queue
        self._replies = replies
        self.door = door
        self._scaler = scaler
        self._metrics = metrics
        self._memory = memory
        self._quota = quota or Account("", "", 256, 256, 32 << 20)

    async def submit(self, model_name: str, request: wire.GenerationRequest) -> Ticket:
        """``submit_all`` of a request of one choice, for no key."""
        return (await self.submit_all(model_name, [request], 1))[0]

    async def submit_all(
        self, model_name: str, requests: Sequence[wire.GenerationRequest], per_prompt: int, grant: Grant | None = None
    ) -> list[Ticket]:
        """Queue a client request's choices (``choices.fan_out``'s order, ``per_prompt`` a prompt), its prompts
        stored once and charged to the model's account and ``grant``'s key's (``gateway.queue.budget``): all or none.
        Returns a ticket per choice."""
        with self.tracing.span("kaltstart.admission", {"gen_ai.request.model": model_name}):
            model = self.catalog.get(model_name)
            await self._limits.check(model.name, requests[0].params.max_tokens)
            return await self._enqueue(model, requests, per_prompt, grant)

    async def submit_upstream(self, model_name: str, request: UpstreamRequest, grant: Grant | None = None) -> Ticket:
        """Queue a request for an OpenAI-compatible upstream (``protocol = openai``): one entry, whatever its
        ``n``, charged like any other."""
        with self.tracing.span("kaltstart.admission", {"gen_ai.request.model": model_name}):
            model = self.catalog.get(model_name)
            return (await self._enqueue(model, [request], 1, grant))[0]

    async def _enqueue(
        self, model: ModelSettings, requests: Sequence[Payload], per_prompt: int, grant: Grant | None
    ) -> list[Ticket]:
        account = self._account(grant)
        now = time.time()
        stored = Stored.of(
            [
                QueuedRequest(
                    request=r, reply_to=self._replies.channel, accepted_at=now, gateway=self.settings.gateway_id
                )
                for r in requests
            ],
            per_prompt,
            account,
        )
        if stored.choice_bytes > self.settings.max_choice_bytes:
            raise PayloadTooLarge(
                f"This request's prompts times its choices come to {stored.choice_bytes} bytes, over the limit of "
                f"{self.settings.max_choice_bytes}; ask for fewer choices (n) or send a shorter prompt.",
                param="n",
            )
        if self._memory is not None:
            await self._memory.check()
        closer = ExitStack()
        tickets = [self._ticket(model, request.id, closer, stored.held) for request in requests]
        try:
            entry_ids, fenced = await self.door.enter(
                model.name, lambda: self._queue.enqueue_stored(model.name, stored)
            )
        except NotReplicated as exc:
            await _withdraw(tickets, exc.entry_ids)
            closer.close()
            raise
        except BaseException as exc:
            closer.close()
            if isinstance(exc, KeyQuotaExceeded) and grant is not None:
                self._metrics.key_refusals.labels(grant.label, exc.quota).inc()
            raise
        if self._memory is not None:
            self._memory.added(stored.size)
        if grant is not None and account is not None:
            self._metrics.key_requests.labels(grant.label).inc()
        for ticket, entry_id in zip(tickets, entry_ids, strict=True):
            ticket.entry_id = entry_id
        await self._scaler.ensure_capacity(model.name, recheck=fenced)
        return tickets

    def _ticket(self, model: ModelSettings, request_id: str, closer: ExitStack, held: Held) -> Ticket:
        """A ticket whose replies are expected from now on (before its request is queued); ``closer`` closes them
        all, once every ticket of the request is closed."""
        own = ExitStack()
        inbox = own.enter_context(self._replies.expect(request_id))
        closer.callback(own.close)
        return Ticket(
            model=model,
            request_id=request_id,
            inbox=inbox,
            queue=self._queue,
            request_timeout_s=self.settings.request_timeout_s,
            closer=own,
            abandon=self._abandon,
            retry_after_s=lambda: self.cold_starts.retry_after_s(model.name, model.retry_after_s),
            held=held,
        )

    def _account(self, grant: Grant | None) -> Account | None:
        """``grant``'s key's account with its limits (the settings' where its line sets none); None for no key."""
        if grant is None or not grant.account:
            return None
        quota, default = grant.quota, self._quota
        return Account(
            grant.account,
            grant.label,
            quota.max_requests or default.max_requests,
            quota.max_entries or default.max_entries,
            quota.max_bytes or default.max_bytes,
        )

    def record(self, model: str, status: int, seconds: float) -> None:
        label = model if self.catalog.has(model) else ""
        self._metrics.requests.labels(label, str(status)).inc()
        if status == 200:
            self._metrics.request_seconds.labels(label).observe(seconds)

    def record_cancellation(self, model: str, error: RequestError) -> None:
        """Count a request cancelled because its client left or its deadline passed (the entry was cancelled)."""
        reason = {ClientGone: "client_gone", ColdStartTimeout: "timeout", DeadlineExceeded: "timeout"}.get(type(error))
        if reason is not None and self.catalog.has(model):
            self._metrics.cancelled.labels(model, reason).inc()

    def record_first_token(self, model: str, seconds: float) -> None:
        self._metrics.ttft_seconds.labels(model).observe(seconds)

    async def readiness_problem(self) -> str | None:
        """Why this replica should not get traffic now, or None."""
        if not await self._queue.ping():
            return "redis unreachable"
        if not self._replies.listening:
            return "reply subscription down"
        return None

    async def render_metrics(self) -> bytes:
        """As the autoscaler last observed the models (at most one tick old): a scrape reads nothing from Redis."""
        return self._metrics.render()
