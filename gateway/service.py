"""A request's way through the gateway: admit -> enqueue -> ensure capacity -> await result.

``Gateway.submit`` does the first three and hands back a ``Ticket``; the route awaits the ticket and responds.
The handler never calls a runtime itself: whichever replica dispatches the request, its replies come back here
through Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass

import wire
from gateway.catalog import ModelCatalog
from gateway.coldstarts import ColdStarts
from gateway.errors import (
    ClientGone,
    ColdStartTimeout,
    DeadlineExceeded,
    GenerationFailed,
    InvalidRequest,
    QueueUnavailable,
    RequestError,
)
from gateway.fence import FencedDoor
from gateway.limits import ContextLengths
from gateway.messages import AnyReply, Failed, Finished, Token
from gateway.metrics import Metrics
from gateway.queue import QueuedRequest, RequestQueue
from gateway.replies import ReplyRouter
from gateway.scaling import Scaler
from gateway.settings import ModelSettings, ServerSettings

log = logging.getLogger("kaltstart.gateway")

#: A waiting request that has heard nothing on pub/sub for this long reads its stored final reply, in case the
#: subscription dropped it. A backstop, not the normal path.
MISSED_REPLY_CHECK_S = 5.0

#: Takes over the cancellation of a request (model, request id, entry id) that could not be written now.
Abandon = Callable[[str, str, str], None]


class Ticket:
    """One accepted request, from the client's side: wait for dispatch, then for tokens and the result."""

    def __init__(
        self,
        model: ModelSettings,
        request_id: str,
        inbox: asyncio.Queue[AnyReply],
        queue: RequestQueue,
        request_timeout_s: float,
        closer: ExitStack,
        abandon: Abandon,
        retry_after_s: Callable[[], int],
    ) -> None:
        self.model = model
        self.id = request_id
        self.entry_id = ""
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
            return

    async def stream(self) -> AsyncIterator[Delta | wire.FinishEvent]:
        """New text (and its log-probability entries) as it is generated, then the finished result. Raises the
        request's error, if any."""
        while True:
            try:
                reply = self._early.pop(0) if self._early else await self._next(self._deadline)
            except TimeoutError:
                if await self._give_up():
                    raise DeadlineExceeded("The request did not finish in time.") from None
                continue
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
            self._abandon(self.model.name, self.id, self.entry_id)
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
        if await self._queue.cancel(self.model.name, self.id, self.entry_id):
            self._settled = True
            return True
        stored = await self._queue.final_reply(self.model.name, self.id)
        if stored is not None:
            self._inbox.put_nowait(stored)
        return False


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


class Gateway:
    def __init__(
        self,
        settings: ServerSettings,
        catalog: ModelCatalog,
        queue: RequestQueue,
        replies: ReplyRouter,
        door: FencedDoor,
        scaler: Scaler,
        metrics: Metrics,
        abandon: Abandon,
        limits: ContextLengths,
        cold_starts: ColdStarts,
    ) -> None:
        self.settings = settings
        self.cold_starts = cold_starts
        self._abandon = abandon
        self._limits = limits
        self.catalog = catalog
        self._queue = queue
        self._replies = replies
        self.door = door
        self._scaler = scaler
        self._metrics = metrics

    async def submit(self, model_name: str, request: wire.GenerationRequest) -> Ticket:
        model = self.catalog.get(model_name)
        await self._limits.check(model.name, request.params.max_tokens)
        closer = ExitStack()
        inbox = closer.enter_context(self._replies.expect(request.id))
        ticket = Ticket(
            model, request.id, inbox, self._queue, self.settings.request_timeout_s, closer, self._abandon,
            retry_after_s=lambda: self.cold_starts.retry_after_s(model.name, model.retry_after_s),
        )  # fmt: skip
        queued = QueuedRequest(
            request=request,
            reply_to=self._replies.channel,
            accepted_at=time.time(),
            gateway=self.settings.gateway_id,
        )
        try:
            ticket.entry_id, fenced = await self._enqueue(model.name, queued)
        except BaseException:
            closer.close()
            raise
        await self._scaler.ensure_capacity(model.name, recheck=fenced)
        return ticket

    async def _enqueue(self, model: str, queued: QueuedRequest) -> tuple[str, bool]:
        """Enqueue, waiting at the door while a scale-down of the model is being written (see ``gateway.fence``).
        Returns the entry id and whether we had to wait (then the scale count must be read afresh)."""
        return await self.door.enter(model, lambda: self._queue.enqueue(model, queued))

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
