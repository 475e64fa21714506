"""The upstream relay: forwards a model's requests one by one to OpenAI-compatible replicas (``protocol = openai``).

Each request the dispatcher hands on is sent as its own ``POST`` to the replica's ``/v1/chat/completions`` or
``/v1/completions`` (the client's body, the model name the upstream serves), in a task of its own; the dispatcher's
pool bounds how many run on one replica (``max-concurrency``) and picks the replica with the fewest in flight.

What comes back goes through the same reply path as our runtime's tokens: a non-streamed answer, or a refusal
(4xx), is settled as it is (``Answered``: status and body); a streamed one is relayed event by event (``Chunk``,
one message per read of the upstream's stream) and then settled. Failures:

- the connection is refused, or the upstream answers 503 (not ready): the request goes back on the queue, not
  counted against it, and the replica gets no work for a moment (``EndpointPool.suspend``);
- a 5xx, a reset or a timeout before anything was relayed: a failed attempt, retried on another replica up to
  ``max_attempts`` and then failed with 502 (the poison isolation of ``gateway.dispatch.loop`` applies);
- the same after chunks were relayed: the client gets an error event, never a stream spliced from two attempts;
- the client left (``cancel``): the task is cancelled, which closes the upstream connection: that is how vLLM,
  SGLang and ``transformers serve`` notice an aborted request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence

from gateway.dispatch.observed import UNKNOWN, ReplicaStart
from gateway.errors import QueueUnavailable
from gateway.metrics import Metrics
from gateway.queue.stream import Delivery, RequestQueue, Settlement
from gateway.queue.upstream import UpstreamRequest
from gateway.relay.buffer import ReplyBuffer, ndjson_reads
from gateway.relay.messages import BROKEN_STREAM, Answered, Chunk, Dispatched, Failed, Final
from gateway.relay.transport import ReplySender
from gateway.replicas.client import BatchAnswer, RuntimeClient, RuntimeFailed, RuntimeUnreachable
from gateway.replicas.endpoints import EndpointPool

log = logging.getLogger("kaltstart.dispatch")

_DONE = "[DONE]"


class _UpstreamFailed(Exception):
    """A 5xx from the upstream: counted as the replica's failure."""


class _UpstreamNotReady(Exception):
    """503: the upstream is up but cannot serve yet (loading, or overloaded); the request never ran there."""


class UpstreamRelay:
    """Forwards one model's requests to OpenAI-compatible replicas, one task each; frees each request's slot in
    ``pool`` once it is done. ``not_ready(url)``: the replica answered 503."""

    def __init__(
        self,
        *,
        model: str,
        queue: RequestQueue,
        sender: ReplySender,
        client: RuntimeClient,
        pool: EndpointPool,
        metrics: Metrics,
        max_attempts: int,
        not_ready: Callable[[str], None],
    ) -> None:
        self._model = model
        self._queue = queue
        self._sender = sender
        self._client = client
        self._pool = pool
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._not_ready = not_ready
        #: Whether a request went out yet (``Metrics.dispatching``).
        self._dispatched = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held: set[str] = set()
        self._cancelled: set[str] = set()

    def held(self) -> frozenset[str]:
        """Entry ids of the requests in flight."""
        return frozenset(self._held)

    def in_flight(self) -> set[asyncio.Task[None]]:
        return set(self._tasks.values())

    def start(self, url: str, batch: Sequence[Delivery], replica: ReplicaStart = UNKNOWN) -> None:
        """Forward each request of ``batch`` to ``url``, each in a task of its own (``replica``: when it became
        ready, for the cold-start wait its dispatch reports)."""
        self._pool.start(url, len(batch))
        for delivery in batch:
            request_id = delivery.queued.id
            self._held.add(delivery.entry_id)
            task = asyncio.create_task(self._forward(url, delivery, replica), name=f"upstream-{self._model}")
            self._tasks[request_id] = task
            task.add_done_callback(functools.partial(self._done, delivery=delivery, url=url))

    def cancel(self, request_id: str) -> None:
        """The request's client left (its cancellation is settled): stop forwarding it, closing the connection."""
        task = self._tasks.get(request_id)
        if task is not None and not task.done():
            self._cancelled.add(request_id)
            task.cancel()

    def _done(self, task: asyncio.Task[None], *, delivery: Delivery, url: str) -> None:
        self._tasks.pop(delivery.queued.id, None)
        self._cancelled.discard(delivery.queued.id)
        self._held.discard(delivery.entry_id)
        self._pool.finish(url)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("request %s for %s failed unexpectedly", delivery.queued.id, self._model, exc_info=exc)

    async def _forward(self, url: str, delivery: Delivery, replica: ReplicaStart) -> None:
        request = delivery.queued.request
        assert isinstance(request, UpstreamRequest), "an upstream model's queue holds upstream requests"
        relayed: set[str] = set()  # holds the id once any event of the stream reached the client's gateway
        try:
            await self._announce(delivery, replica)
            async with self._client.stream(url + request.path, request.body) as answer:
                if answer.status == 503:
                    raise _UpstreamNotReady(await answer.text())
                if answer.status >= 500:
                    raise _UpstreamFailed(f"{answer.status}: {(await answer.text())[:200]}")
                if answer.status != 200 or not request.stream:
                    final = Answered(id=request.id, status=answer.status, body=await answer.text())
                else:
                    await self._relay(answer, delivery, relayed)
                    final = Answered(id=request.id, status=200)
            await self._settle(delivery, final)
        except asyncio.CancelledError:
            if request.id not in self._cancelled:  # this gateway is stopping: another one will forward it
                await asyncio.shield(self._queue.put_back(self._model, [delivery]))
            else:
                self._metrics.stopped.labels(self._model).inc()
            raise
        except RuntimeUnreachable as exc:  # it never reached the replica: not the request's fault
            log.warning("replica %s of %s cannot be reached (%s); its request goes back", url, self._model, exc)
            self._pool.suspend(url)
            await self._queue.put_back(self._model, [delivery])
        except _UpstreamNotReady as exc:
            log.warning("replica %s of %s answered 503 (%s); its request goes back", url, self._model, exc)
            self._not_ready(url)
            await self._queue.put_back(self._model, [delivery])
        except (RuntimeFailed, _UpstreamFailed) as exc:
            log.warning("replica %s failed request %s for %s: %s", url, request.id, self._model, exc)
            await (self._broken(delivery) if relayed else self._retry_or_fail(delivery))
        except QueueUnavailable:
            log.error("queue unavailable while forwarding a request for %s", self._model)

    async def _announce(self, delivery: Delivery, replica: ReplicaStart) -> None:
        queued = delivery.queued
        if not self._dispatched:
            self._dispatched = True
            self._metrics.dispatching(self._model)
        self._metrics.queue_wait_seconds.labels(self._model).observe(max(0.0, time.time() - queued.accepted_at))
        cold_ms = replica.waited_ms(queued.accepted_at)
        dispatched = Dispatched(id=queued.id, attempt=queued.attempt, cold_start_ms=cold_ms)
        await self._sender.publish([(queued.reply_to, dispatched)])

    async def _relay(self, answer: BatchAnswer, delivery: Delivery, relayed: set[str]) -> None:
        """Relay the events of a streamed answer, one message per read (``relayed`` gets the request's id once
        one went). The stream ends with the response (``[DONE]`` is optional: ``transformers serve`` sends none);
        an answer that breaks off raises ``RuntimeFailed`` (the client's HTTP library noticed the truncation)."""
        queued = delivery.queued
        buffer = ReplyBuffer(self._sender)
        async for lines in ndjson_reads(answer.chunks()):
            data = [line[5:].strip().decode(errors="replace") for line in lines if line.startswith(b"data:")]
            if events := tuple(d for d in data if d != _DONE):
                buffer.add(queued.reply_to, Chunk(id=queued.id, attempt=queued.attempt, data=events))
                self._metrics.streamed.labels(self._model).inc(len(events))
                relayed.add(queued.id)
                await buffer.flush()

    async def _broken(self, delivery: Delivery) -> None:
        """The stream broke after chunks reached the client: it gets an error, not a second attempt spliced on."""
        log.error("the stream of %s for %s broke off after it had begun", delivery.queued.id, self._model)
        await self._settle(delivery, Failed(id=delivery.queued.id, status=502, message=BROKEN_STREAM))

    async def _retry_or_fail(self, delivery: Delivery) -> None:
        if delivery.queued.failures + 1 < self._max_attempts:
            self._metrics.redeliveries.labels(self._model).inc()
            await self._queue.requeue(self._model, delivery)
            return
        log.error("request %s for %s failed on %d attempts", delivery.queued.id, self._model, self._max_attempts)
        self._metrics.poison.labels(self._model).inc()
        failed = Failed(id=delivery.queued.id, status=502, message="The model failed to generate a response.")
        await self._settle(delivery, failed)

    async def _settle(self, delivery: Delivery, reply: Final) -> None:
        here = self._sender.is_local(delivery.queued.reply_to)
        (first,) = await self._queue.settle_many(self._model, [Settlement(delivery, reply, publish=not here)])
        if first and here:
            self._sender.deliver_here(reply)
