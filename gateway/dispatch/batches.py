"""The batch relay: runs the batches a dispatcher hands on, one task each, on their replica.

A batch is sent in one ``POST /v1/batch``; each event of the runtime's NDJSON answer is relayed to the gateway
replica holding that request's client, and each final reply is settled (stored, at most once). Requests a failed
replica left unfinished go back on the queue for another replica, up to ``max_attempts``; a request that fails on
every attempt (a poison request) is failed with 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

import wire
from gateway.dispatch.cancels import RemoteCancels
from gateway.dispatch.observed import UNKNOWN, DispatchSpans, ReplicaStart
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.queue.stream import Delivery, RequestQueue, Settlement
from gateway.relay.buffer import ReplyBuffer, ndjson_reads
from gateway.relay.messages import Dispatched, Failed, Final, Finished, Token
from gateway.relay.transport import ReplySender
from gateway.replicas.client import RuntimeClient, RuntimeFailed, RuntimeUnreachable
from gateway.replicas.endpoints import EndpointPool
from gateway.settings import Adapter

log = logging.getLogger("kaltstart.dispatch")


class _RuntimeRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"runtime answered {status}: {body[:200]}")
        self.status = status


class _RuntimeNotReady(_RuntimeRefused):
    """503: the replica is up but has no model loaded (yet, or any more); the batch never ran there."""


class BatchRelay:
    """Forwards one model's batches to their replicas, relays the answers' events, retries or fails what a failed
    replica left unfinished, and settles the final replies. Frees each request's row in ``pool`` once it is done."""

    def __init__(
        self,
        *,
        model: str,
        queue: RequestQueue,
        sender: ReplySender,
        client: RuntimeClient,
        pool: EndpointPool,
        cancels: RemoteCancels,
        metrics: Metrics,
        max_attempts: int,
        not_ready: Callable[[str], None],
        spans: DispatchSpans | None = None,
        adapter: Adapter | None = None,
    ) -> None:
        """``not_ready(url)``: the replica answered that it has no model loaded (the batch goes back); ``spans``:
        where each request's dispatch is traced (nowhere by default); ``adapter``: ``model`` is a LoRA adapter, its
        batches go to its base (``BatchRequest.model``), each row naming it."""
        self._model = model
        self._base = model if adapter is None else adapter.base
        self._adapter = None if adapter is None else wire.AdapterRef(name=model, source=adapter.source)
        self._queue = queue
        self._sender = sender
        self._client = client
        self._pool = pool
        self._cancels = cancels
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._not_ready = not_ready
        self._spans = spans or DispatchSpans(model=model, gateway_id="")
        #: Whether a batch went out yet (``Metrics.dispatching``).
        self._dispatched = False
        self._batches: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()
        #: Request id -> the replica running it, for the requests of running batches.
        self._rows: dict[str, str] = {}

    def held(self) -> frozenset[str]:
        """Entry ids the running batches hold."""
        return frozenset(self._held)

    def in_flight(self) -> set[asyncio.Task[None]]:
        """The running batches."""
        return set(self._batches)

    def start(self, url: str, batch: Sequence[Delivery], replica: ReplicaStart = UNKNOWN) -> None:
        """Send ``batch`` to ``url`` (ready since ``replica.ready_at``) and relay its answer, in a task of its
        own."""
        self._pool.start(url, len(batch))
        held = {d.entry_id for d in batch}
        self._held |= held
        ids = [d.queued.id for d in batch]
        self._rows.update(dict.fromkeys(ids, url))
        self._cancels.running(url, ids)
        task = asyncio.create_task(self._forward(url, batch, replica), name=f"batch-{self._model}")
        self._batches.add(task)
        task.add_done_callback(lambda t: self._batch_done(t, held, ids))

    def _row_done(self, request_id: str) -> None:
        """A request of a running batch is answered (or given up): its row is free on its replica."""
        self._cancels.finished(request_id)
        self._spans.ended(request_id)
        url = self._rows.pop(request_id, None)
        if url is not None:
            self._pool.finish(url)

    def _batch_done(self, task: asyncio.Task[None], held: set[str], requests: list[str]) -> None:
        self._batches.discard(task)
        self._held -= held
        for request_id in requests:
            self._row_done(request_id)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("batch for %s failed unexpectedly", self._model, exc_info=exc)

    async def _forward(self, url: str, batch: Sequence[Delivery], replica: ReplicaStart) -> None:
        unfinished = {d.queued.id: d for d in batch}
        try:
            await self._announce(batch, replica)
            await self._stream_batch(url, self._spans.sent(batch, url, replica), unfinished)
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

    async def _announce(self, batch: Sequence[Delivery], replica: ReplicaStart) -> None:
        now = time.time()
        if not self._dispatched:
            self._dispatched = True
            self._metrics.dispatching(self._model)
        for d in batch:
            self._metrics.queue_wait_seconds.labels(self._model).observe(max(0.0, now - d.queued.accepted_at))
        self._metrics.batches.labels(self._model).inc()
        self._metrics.batch_size.labels(self._model).observe(len(batch))
        await self._sender.publish(
            [
                (
                    d.queued.reply_to,
                    Dispatched(
                        id=d.queued.id, attempt=d.queued.attempt, cold_start_ms=replica.waited_ms(d.queued.accepted_at)
                    ),
                )
                for d in batch
            ]
        )

    async def _stream_batch(
        self, url: str, requests: Sequence[wire.GenerationRequest], unfinished: dict[str, Delivery]
    ) -> None:
        body = wire.BatchRequest(model=self._base, requests=self._rows_of(requests))
        async with self._client.stream(url + wire.BATCH_PATH, body.model_dump_json()) as answer:
            if (residency := wire.Residency.from_headers(answer.headers)) is not None:  # a pool replica
                self._pool.learn(url, residency)
            if (adapters := wire.adapters_from_header(answer.headers)) is not None:  # a runtime that serves adapters
                self._pool.learn_adapters(url, adapters)
            if answer.status == 503:
                raise _RuntimeNotReady(answer.status, await answer.text())
            if answer.status != 200:
                raise _RuntimeRefused(answer.status, await answer.text())
            self._cancels.accepted(url, [r.id for r in requests])
            tokens = ReplyBuffer(self._sender)
            async for lines in ndjson_reads(answer.chunks()):
                finals: list[tuple[Delivery, Final]] = []
                for line in lines:
                    self._relay(wire.BatchEventAdapter.validate_json(line), unfinished, tokens, finals)
                await tokens.flush()  # a request's final reply comes after every token before it
                if finals:
                    await self._settle(finals)

    def _rows_of(self, requests: Sequence[wire.GenerationRequest]) -> tuple[wire.GenerationRequest, ...]:
        """The batch's requests; an adapter's each name it (set here, not at admission: the adapter's source is
        what the catalog says when the batch goes, and the queued entry stays as the client sent it)."""
        if self._adapter is None:
            return tuple(requests)
        update = {"adapter": self._adapter}
        return tuple(r.model_copy(update=update) for r in requests)

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
        elif event.code in ("invalid_request", "adapter_invalid"):  # the client's request (or adapter): no retry
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
