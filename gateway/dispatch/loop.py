"""Dispatchers: per model, read queued requests in batches and forward each batch to one ready replica.

Every gateway replica runs a dispatcher for every model; the consumer group shares the queue among them. A batch
goes to the ready replica with a free slot and the fewest requests in flight, in one ``POST /v1/batch``; each
event of the runtime's NDJSON answer is relayed to the replica holding that request's client. Requests a failed
replica left unfinished are put back on the queue for another replica (up to ``max_attempts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

import wire
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.queue.stream import Delivery, RequestQueue, Settlement
from gateway.relay.buffer import ReplyBuffer, ndjson_reads
from gateway.relay.messages import Dispatched, Failed, Final, Finished, Token
from gateway.relay.transport import ReplySender
from gateway.replicas.client import RuntimeClient, RuntimeFailed, RuntimeUnreachable
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.context import ContextLengths
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.dispatch")

#: Longest wait for a work signal before a dispatcher with a ready replica reads its queue anyway. Signals are
#: not expected to go missing (see ``gateway.queue.signals``); this bounds the harm if one does, at one read per model
#: with a ready replica per period.
IDLE_READ_S = 10.0


class _RuntimeRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"runtime answered {status}: {body[:200]}")
        self.status = status


class _RuntimeNotReady(_RuntimeRefused):
    """503: the replica is up but has no model loaded (yet, or any more); the batch never ran there."""


class Dispatcher:
    def __init__(
        self,
        settings: ModelSettings,
        queue: RequestQueue,
        sender: ReplySender,
        endpoints: ReadyEndpoints,
        client: RuntimeClient,
        consumer: str,
        metrics: Metrics,
        max_attempts: int,
        is_waiting: Callable[[str], bool] = lambda _id: True,
        limits: ContextLengths | None = None,
        cold_starts: ColdStarts | None = None,
    ) -> None:
        """``is_waiting(request_id)``: whether a client of this gateway replica still waits for that request."""
        self.settings = settings
        self._model = settings.name
        self._queue = queue
        self._sender = sender
        self._endpoints = endpoints
        self._pool = EndpointPool(settings.name, endpoints, budget=settings.max_batch_size)
        self._cold_starts = cold_starts
        self._client = client
        self._consumer = consumer
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._is_waiting = is_waiting
        self._limits = limits
        self._reported: set[str] = set()
        self._batches: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()
        #: Request id -> the replica running it, for the requests of running batches.
        self._running: dict[str, str] = {}
        #: Requests whose batch the replica has taken (its answer began), and cancellations waiting for that.
        self._accepted: set[str] = set()
        self._cancel_when_accepted: set[str] = set()
        self._prepared = False
        self._dispatched_to: set[str] = set()
        self._work = queue.work.event(settings.name)
        #: The last read left the queue empty and no work signal came since.
        self._drained = False

    def held(self) -> frozenset[str]:
        """Entry ids this dispatcher's running batches hold (the janitor leaves those alone)."""
        return frozenset(self._held)

    async def step(self) -> None:
        """Dispatch one batch, or wait for the model's work signal if the queue is empty. Batches already sent
        keep running when the dispatcher stops (see ``drain``)."""
        await self._dispatch_next()

    async def drain(self, timeout_s: float) -> None:
        """Let batches in flight finish for up to ``timeout_s``; the rest are cancelled and put back."""
        if self._batches:
            _done, pending = await asyncio.wait(set(self._batches), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._pool.close()

    async def _dispatch_next(self) -> None:
        """Wait for work (if the last read emptied the queue) and a replica with room, read up to that many queued
        requests, and send them as one batch. A continuous replica takes them into its running batch; the loop
        then looks for room again at once."""
        url, free = await self._replica()
        if self._drained:  # the last read emptied the queue: nothing to read before the next work signal
            await self._wait_for_work()
            url, free = await self._replica()  # the same at once, unless it went away meanwhile
        batch: list[Delivery] = []
        try:
            self._work.clear()  # before the read: work added meanwhile leaves it set
            batch = await self._read(free, self._fill_s(url))
            if not batch:
                return
            while batch and not self._pool.is_ready(url):  # it went away while we waited for work
                url, free = await self._pool.acquire()
            if len(batch) > free:  # another replica is less roomy than the one we read for
                await self._queue.put_back(self._model, batch[free:])
                batch = batch[:free]
            if len(batch) == 1 and batch[0].queued.failures > 0:  # a retry (``_isolate_retries``) runs alone
                url = await self._pool.acquire_alone()
        except BaseException:
            if batch:
                await asyncio.shield(self._queue.put_back(self._model, batch))
            raise
        if batch:
            self._start(url, batch)

    def _start(self, url: str, batch: Sequence[Delivery]) -> None:
        self._pool.start(url, len(batch))
        if url not in self._dispatched_to:
            self._dispatched_to.add(url)
            self._first_dispatch(url, batch)
        held = {d.entry_id for d in batch}
        self._held |= held
        self._running.update({d.queued.id: url for d in batch})
        task = asyncio.create_task(self._forward(url, batch), name=f"batch-{self._model}")
        self._batches.add(task)
        task.add_done_callback(lambda t: self._batch_done(t, held, [d.queued.id for d in batch]))

    def _row_done(self, request_id: str) -> None:
        """A request of a running batch is answered (or given up): its row is free on its replica."""
        self._accepted.discard(request_id)
        self._cancel_when_accepted.discard(request_id)
        url = self._running.pop(request_id, None)
        if url is not None:
            self._pool.finish(url)

    def _batch_done(self, task: asyncio.Task[None], held: set[str], requests: list[str]) -> None:
        self._batches.discard(task)
        self._held -= held
        for request_id in requests:
            self._row_done(request_id)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("batch for %s failed unexpectedly", self._model, exc_info=exc)

    def _fill_s(self, url: str) -> float:
        """The batching window for a batch to ``url``: none for a continuous replica, whose running batch takes
        later requests at its next step anyway, so a request that finds room there goes at once."""
        return 0.0 if self._pool.is_continuous(url) else self.settings.max_batch_delay_s

    async def _replica(self) -> tuple[str, int]:
        """A ready replica with room, and how many requests it takes now."""
        url, free = await self._pool.acquire()
        if url not in self._reported:
            await self._read_report(url)
            free = self._pool.free(url) or free  # a continuous replica may take more than a static one
        if not self._prepared:  # once the model has a replica: a gateway with many idle models starts quietly
            await self._queue.prepare(self._model)
            self._prepared = True
        return url, free

    async def _wait_for_work(self) -> None:
        """Wait for the model's work signal, with room on a replica: work this gateway adds meanwhile is ours to
        take, and the other gateways are not woken for it (``gateway.queue.signals``)."""
        self._drained = False
        await self._queue.work.wait(self._model, IDLE_READ_S)

    async def _read(self, room: int, fill_s: float) -> list[Delivery]:
        """Read a batch; ``_drained`` says whether the queue was empty after it (unless a signal came since)."""
        try:
            read = await self._queue.read(self._model, self._consumer, min(room, self.settings.max_batch_size), fill_s)
            self._drained = read.drained and not self._work.is_set()
            if not read.drained:  # more than we have room for: the other gateways' dispatchers may have some
                await self._queue.backlog(self._model)
            return await self._isolate_retries(await self._drop_orphans(read.deliveries))
        except QueueUnavailable as exc:
            log.warning("queue unavailable (%r); %s dispatcher retries in 1 s", exc.__cause__, self._model)
            await asyncio.sleep(1.0)  # back off from a failing Redis, then read again
            return []

    def _first_dispatch(self, url: str, batch: Sequence[Delivery]) -> None:
        """The first batch to a replica: if requests were waiting for it to be ready, how long they waited after."""
        since = self._endpoints.ready_since(url)
        if self._cold_starts is not None and since is not None and min(d.queued.accepted_at for d in batch) < since:
            self._cold_starts.dispatched(self._model, max(0.0, time.time() - since))

    async def _read_report(self, url: str) -> None:
        """A replica's ready report, once (announced, or read from its ``/readyz``): whether it takes requests into
        a running batch, and the model's context length, for the door's check (``gateway.replicas.context``)."""
        self._reported.add(url)
        try:
            report = self._endpoints.report(self._model, url)
            if report is None:
                report = wire.ReadyBody.model_validate_json(await self._client.get(url + wire.READY_PATH))
            self._pool.set_continuous(url, report.scheduler == "continuous")
            if self._limits is not None:
                await self._limits.learn(self._model, report.context_length)
        except (RuntimeFailed, ValidationError, QueueUnavailable) as exc:
            log.warning("no ready report from %s for %s: %r", url, self._model, exc)

    def cancel(self, request_id: str) -> None:
        """The request was cancelled (its client left): if one of our batches runs it, tell that replica to drop
        it at its next decoding step. A runtime forgets cancellations of ids it does not hold yet, so one that
        comes before the runtime has taken the batch waits for it (``_accepted``)."""
        url = self._running.get(request_id)
        if url is None:
            return
        if request_id in self._accepted:
            self._send_cancel(url, [request_id])
        else:
            self._cancel_when_accepted.add(request_id)

    def _send_cancel(self, url: str, request_ids: Sequence[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel_on(url, request_ids))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _batch_accepted(self, url: str, batch: Sequence[Delivery]) -> None:
        ids = {d.queued.id for d in batch}
        self._accepted |= ids
        if due := ids & self._cancel_when_accepted:
            self._cancel_when_accepted -= due
            self._send_cancel(url, sorted(due))

    async def _cancel_on(self, url: str, request_ids: Sequence[str]) -> None:
        body = wire.CancelRequest(ids=tuple(request_ids)).model_dump_json()
        try:
            await self._client.post(url + wire.CANCEL_PATH, body)
        except RuntimeFailed as exc:  # the batch ends anyway; only the tokens for nobody are not saved
            log.warning("could not cancel %s on %s: %r", ", ".join(request_ids), url, exc)

    async def _drop_orphans(self, batch: list[Delivery]) -> list[Delivery]:
        """Requests this gateway replica accepted but nobody here waits for any more (the client got an error
        while Redis was unreachable, or its enqueue's reply was lost): cancelled, not generated."""
        keep = []
        for delivery in batch:
            if delivery.queued.gateway == self._consumer and not self._is_waiting(delivery.queued.id):
                await self._queue.cancel(self._model, delivery.queued.id, delivery.entry_id, delivery.queued.held)
                self._metrics.cancelled.labels(self._model, "orphaned").inc()
            else:
                keep.append(delivery)
        return keep

    async def _isolate_retries(self, batch: list[Delivery]) -> list[Delivery]:
        """A request that was in a batch whose replica failed goes alone next time, so that a request that crashes
        its replica (a poison request) uses up only its own attempts, not those of the requests around it."""
        retries = [d for d in batch if d.queued.failures > 0]
        if not retries or len(batch) == 1:
            return batch
        alone = retries[0]
        await self._queue.put_back(self._model, [d for d in batch if d is not alone])
        return [alone]

    async def _forward(self, url: str, batch: Sequence[Delivery]) -> None:
        unfinished = {d.queued.id: d for d in batch}
        try:
            await self._announce(batch)
            await self._stream_batch(url, batch, unfinished)
        except asyncio.CancelledError:  # this gateway is stopping: another one will dispatch them
            await asyncio.shield(self._queue.put_back(self._model, list(unfinished.values())))
            raise
        except RuntimeUnreachable as exc:  # the batch never reached the replica: not the requests' fault
            log.warning("replica %s of %s cannot be reached (%s); its batch goes back", url, self._model, exc)
            self._pool.suspend(url)
            await self._queue.put_back(self._model, list(unfinished.values()))
            return
        except _RuntimeNotReady as exc:  # not ready after all (a false ready announcement, a restart): not a failure
            log.warning("replica %s of %s is not ready (%s); its batch goes back", url, self._model, exc)
            self._not_ready(url)
            await self._queue.put_back(self._model, list(unfinished.values()))
            return
        except (RuntimeFailed, ValidationError, _RuntimeRefused) as exc:
            log.warning("replica %s failed a batch of %d for %s: %s", url, len(batch), self._model, exc)
        except QueueUnavailable:
            log.error("queue unavailable while relaying a batch for %s", self._model)
            return  # the entries stay pending: the janitor puts them back once Redis answers again
        for delivery in unfinished.values():
            await self._retry_or_fail(delivery)

    def _not_ready(self, url: str) -> None:
        """``url`` answered that it has no model loaded: its announcement no longer counts, it gets no work until
        the ready set changes or ``SUSPEND_S`` passed, and its ready report is read again when it is back."""
        self._endpoints.withdraw(self._model, url)
        self._pool.suspend(url)  # after the withdrawal, whose change of the ready set lifts suspensions
        self._reported.discard(url)

    async def _announce(self, batch: Sequence[Delivery]) -> None:
        now = time.time()
        for d in batch:
            self._metrics.queue_wait_seconds.labels(self._model).observe(max(0.0, now - d.queued.accepted_at))
        self._metrics.batches.labels(self._model).inc()
        self._metrics.batch_size.labels(self._model).observe(len(batch))
        await self._sender.publish(
            [(d.queued.reply_to, Dispatched(id=d.queued.id, attempt=d.queued.attempt)) for d in batch]
        )

    async def _stream_batch(self, url: str, batch: Sequence[Delivery], unfinished: dict[str, Delivery]) -> None:
        body = wire.BatchRequest(model=self._model, requests=tuple(d.queued.request for d in batch))
        async with self._client.stream(url + wire.BATCH_PATH, body.model_dump_json()) as answer:
            if answer.status == 503:
                raise _RuntimeNotReady(answer.status, await answer.text())
            if answer.status != 200:
                raise _RuntimeRefused(answer.status, await answer.text())
            self._batch_accepted(url, batch)
            tokens = ReplyBuffer(self._sender)
            async for lines in ndjson_reads(answer.chunks()):
                finals: list[tuple[Delivery, Final]] = []
                for line in lines:
                    self._relay(wire.BatchEventAdapter.validate_json(line), unfinished, tokens, finals)
                await tokens.flush()  # a request's final reply comes after every token before it
                if finals:
                    await self._settle(finals)

    def _relay(
        self,
        event: wire.TokenEvent | wire.FinishEvent | wire.ErrorEvent,
        unfinished: dict[str, Delivery],
        tokens: ReplyBuffer,
        finals: list[tuple[Delivery, Final]],
    ) -> None:
        """Tokens wait in ``tokens``, final replies in ``finals``, for the flush after this read (the tokens first);
        so the requests that end in one read of the answer are settled in one round trip."""
        delivery = unfinished.get(event.id)
        if delivery is None:
            log.warning("runtime sent an event for unknown request %s", event.id)
            return
        if isinstance(event, wire.TokenEvent):
            if delivery.queued.request.stream:
                self._metrics.streamed.labels(self._model).inc()
                reply = Token(
                    id=event.id,
                    attempt=delivery.queued.attempt,
                    text=event.text,
                    logprobs=event.logprobs,
                    tool_calls=event.tool_calls,
                )
                tokens.add(delivery.queued.reply_to, reply)
            return
        del unfinished[event.id]
        self._row_done(event.id)
        if isinstance(event, wire.ErrorEvent) and event.code == "cancelled":
            self._metrics.stopped.labels(self._model).inc()
            return  # its client left; the cancellation settled it already
        if isinstance(event, wire.FinishEvent):
            finals.append((delivery, Finished(id=event.id, result=event)))
        elif event.code == "invalid_request":
            finals.append((delivery, Failed(id=event.id, status=400, message=event.message)))
        else:
            log.error("runtime failed request %s: %s", event.id, event.message)
            unfinished[event.id] = delivery  # an internal error is retried like a failed replica

    async def _retry_or_fail(self, delivery: Delivery) -> None:
        if delivery.queued.failures + 1 < self._max_attempts:
            self._metrics.redeliveries.labels(self._model).inc()
            await self._queue.requeue(self._model, delivery)
            return
        log.error(
            "request %s for %s failed on %d attempts (its replica failed each time): given up as a poison request",
            delivery.queued.id,
            self._model,
            delivery.queued.failures + 1,
        )
        self._metrics.poison.labels(self._model).inc()
        failed = Failed(id=delivery.queued.id, status=502, message="The model failed to generate a response.")
        await self._settle([(delivery, failed)])

    async def _settle(self, finals: Sequence[tuple[Delivery, Final]]) -> None:
        """Store the final replies (one round trip); a client of this replica gets its reply in-process (after the
        tokens flushed before)."""
        here = [self._sender.is_local(delivery.queued.reply_to) for delivery, _ in finals]
        settlements = [Settlement(d, reply, publish=not h) for (d, reply), h in zip(finals, here, strict=True)]
        firsts = await self._queue.settle_many(self._model, settlements)
        for (_, reply), h, first in zip(finals, here, firsts, strict=True):
            if first and h:
                self._sender.deliver_here(reply)
