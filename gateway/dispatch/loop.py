"""Dispatchers: per model, read queued requests in batches and hand each batch to one ready replica.

Every gateway replica runs a dispatcher for every model; the consumer group shares the queue among them. A batch
goes to the ready replica with a free slot and the fewest requests in flight; the batch relay
(``gateway.dispatch.batches``) sends it, relays its answer, retries or fails what a failed replica left unfinished
and settles the final replies; cancellations reach the replica through ``gateway.dispatch.cancels``. How long a
read waits for a fuller batch is ``gateway.dispatch.window``'s decision.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

import wire
from gateway.dispatch.batches import BatchRelay
from gateway.dispatch.cancels import RemoteCancels
from gateway.dispatch.observed import DispatchSpans, ReplicaStart
from gateway.dispatch.upstream import UpstreamRelay
from gateway.dispatch.window import read_filled, window_s
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.queue.stream import Delivery, RequestQueue
from gateway.relay.transport import ReplySender
from gateway.replicas.client import RuntimeClient, RuntimeFailed
from gateway.replicas.coldstarts import ColdStarts
from gateway.replicas.context import ContextLengths
from gateway.replicas.endpoints import EndpointPool, ReadyEndpoints
from gateway.settings import ModelSettings
from gateway.tracing import OFF, Tracing

log = logging.getLogger("kaltstart.dispatch")

#: Longest wait for a work signal before a dispatcher with a ready replica reads its queue anyway. Signals are
#: not expected to go missing (see ``gateway.queue.signals``); this bounds the harm if one does, at one read per model
#: with a ready replica per period.
IDLE_READ_S = 10.0


class Dispatcher:
    """One model's dispatch loop: acquire a ready replica with room (reading its ready report once), read a batch
    for it, and hand the batch on to the relay (``BatchRelay``); it also notes how long requests waited for a
    replica's first batch (cold-start bookkeeping)."""

    def __init__(
        self,
        *,
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
        tracing: Tracing = OFF,
    ) -> None:
        """``consumer``: this gateway replica's id in the consumer group; ``is_waiting(request_id)``: whether a
        client of this gateway replica still waits for that request; ``tracing``: where dispatches are traced."""
        self.settings = settings
        self._model = settings.name
        self._queue = queue
        self._endpoints = endpoints
        self._pool = EndpointPool(settings.name, endpoints, budget=_budget(settings))
        self._cold_starts = cold_starts
        self._client = client
        self._consumer = consumer
        self._metrics = metrics
        self._is_waiting = is_waiting
        self._limits = limits
        self._cancels = RemoteCancels(client=client)
        # Batches to our runtime, or each request on its own to an OpenAI-compatible upstream.
        spans = DispatchSpans(tracing, model=settings.name, gateway_id=consumer)
        relay = (
            UpstreamRelay
            if settings.forwards
            else functools.partial(BatchRelay, cancels=self._cancels, spans=spans, adapter=settings.adapter)
        )
        self._batches: BatchRelay | UpstreamRelay = relay(
            model=settings.name,
            queue=queue,
            sender=sender,
            client=client,
            pool=self._pool,
            metrics=metrics,
            max_attempts=max_attempts,
            not_ready=self._not_ready,
        )
        self._reported: set[str] = set()
        self._prepared = False
        self._dispatched_to: set[str] = set()
        self._work = queue.work.event(settings.name)
        #: The last read left the queue empty and no work signal came since.
        self._drained = False

    def held(self) -> frozenset[str]:
        """Entry ids this dispatcher's running batches hold (the janitor leaves those alone)."""
        return self._batches.held()

    def cancel(self, request_id: str) -> None:
        """The request was cancelled (its client left): if one of our batches runs it, its replica drops it at its
        next decoding step (``RemoteCancels``); an upstream's request has its connection closed."""
        if isinstance(self._batches, UpstreamRelay):
            self._batches.cancel(request_id)
        else:
            self._cancels.cancel(request_id)

    async def step(self) -> None:
        """Dispatch one batch, or wait for the model's work signal if the queue is empty. Batches already sent
        keep running when the dispatcher stops (see ``drain``)."""
        await self._dispatch_next()

    async def drain(self, timeout_s: float) -> None:
        """Let batches (and cancellations) in flight finish for up to ``timeout_s``; the rest are cancelled and the
        requests of those batches put back."""
        if running := self._batches.in_flight() | self._cancels.in_flight():
            _done, pending = await asyncio.wait(running, timeout=timeout_s)
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
            batch = await self._read(free, window_s(self.settings, continuous=self._pool.is_continuous(url)))
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
            self._hand_on(url, batch)

    def _hand_on(self, url: str, batch: Sequence[Delivery]) -> None:
        if url not in self._dispatched_to:
            self._dispatched_to.add(url)
            self._first_dispatch(url, batch)
        report = self._endpoints.report(self._model, url)
        replica = ReplicaStart(self._endpoints.ready_since(url), report.startup if report is not None else None)
        self._batches.start(url, batch, replica)

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
            size = min(room, _budget(self.settings))
            read = await read_filled(self._queue, self._model, self._consumer, size, fill_s)
            self._drained = read.drained and not self._work.is_set()
            if not read.drained:  # more than we have room for: the other gateways' dispatchers may have some
                await self._queue.backlog(self._model)
            return await self._isolate_retries(await self._drop_orphans(self._new_only(read.deliveries)))
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
        if self.settings.forwards:  # an OpenAI server has no ready report; it takes requests as they come
            self._pool.set_continuous(url, True)
            return
        try:
            report = self._endpoints.report(self._model, url)
            if report is None:
                report = wire.ReadyBody.model_validate_json(await self._client.get(url + wire.READY_PATH))
            self._pool.set_continuous(url, report.scheduler == "continuous")
            if report.adapters:
                self._pool.learn_adapters(url, report.adapters)
            if report.pool is not None:  # read from /readyz (announcements leave it out)
                self._pool.learn_report(url, report.pool)
            if self._limits is not None:
                await self._limits.learn(self._model, report.context_length)
        except (RuntimeFailed, ValidationError, QueueUnavailable) as exc:
            log.warning("no ready report from %s for %s: %r", url, self._model, exc)

    def _not_ready(self, url: str) -> None:
        """``url`` answered that it has no model loaded: its announcement no longer counts, it gets no work until
        the ready set changes or ``SUSPEND_S`` passed, and its ready report is read again when it is back."""
        self._endpoints.withdraw(self._model, url)
        self._pool.suspend(url)  # after the withdrawal, whose change of the ready set lifts suspensions
        self._reported.discard(url)

    def _new_only(self, batch: list[Delivery]) -> list[Delivery]:
        """The deliveries of entries this dispatcher does not hold already. Redis replicates a read asynchronously:
        after a failover the new primary may deliver again, as new, entries a read on the old one delivered just
        before (they are in this read twice, or in a batch still running). The one delivery held goes on; the
        entry is the same, so its settle acks it, and sending it twice would run the request twice."""
        held, seen, keep = self._batches.held(), set(), []
        for delivery in batch:
            if delivery.entry_id in held or delivery.entry_id in seen:
                log.warning("%s: entry %s delivered again (a read lost in a Redis failover?): skipped",
                            self._model, delivery.entry_id)  # fmt: skip
                continue
            seen.add(delivery.entry_id)
            keep.append(delivery)
        return keep

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


def _budget(settings: ModelSettings) -> int:
    """Requests in flight per replica: rows of a batch for our runtime, requests for an OpenAI upstream."""
    return settings.max_concurrency if settings.forwards else settings.max_batch_size
