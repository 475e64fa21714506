"""One ``POST /v1/batch`` as both schedulers handle it: its stream on the event loop, its bookkeeping on the
generation thread, and the seam the HTTP server sees (``Runner``).

Event-loop side: a ``RunningBatch`` is registered with its runner (``Batches``) from the moment the POST is
accepted until its stream ends, queued or running, so ``POST /v1/cancel`` finds its requests as soon as the 200
answer has been sent. Events travel from the generation thread to the loop through an ``asyncio.Queue``; ``None``
ends the stream.

Generation-thread side: every final event passes ``Cancellation.finish`` on its way out (``Outlet.send``), so a
request cancelled while it ran ends as ``cancelled``; the batch's tokens and errors are tallied for its log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.cancellation import Cancellation, cancelled_event
from runtime.engine.interface import BatchEvent
from runtime.settings import SchedulerKind
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent

__all__ = ["Batches", "Emit", "Outlet", "Runner", "RunningBatch", "internal_error"]

#: The one line per batch (``--no-batch-log`` quiets it: with continuous batching that is a line per request).
log = logging.getLogger("runtime.scheduling.batches")

EmitItem = BatchEvent | None
Emit = Callable[[EmitItem], None]


class Runner(Protocol):
    """What the HTTP server needs of a scheduler. Every method but ``close`` is called on the event loop."""

    @property
    def kind(self) -> SchedulerKind: ...

    @property
    def context_length(self) -> int:
        """Most prompt tokens plus ``max_tokens`` one request may ask for here."""
        ...

    @property
    def max_batch_tokens(self) -> int:
        """The token budget of the running batch; 0 if there is none."""
        ...

    @property
    def free_rows(self) -> int:
        """Requests this replica could take right now without making any wait."""
        ...

    @property
    def open_requests(self) -> int:
        """Requests held without a final event yet: running, waiting, or queued."""
        ...

    @property
    def busy(self) -> bool:
        """Whether it holds a batch (queued, running, or its stream still open): a pool never evicts its model."""
        ...

    def submit(self, requests: Sequence[GenerationRequest]) -> RunningBatch:
        """Take the batch; its ``lines()`` must be consumed or the batch ``close()``d (``BatchResponse`` does)."""
        ...

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        """Cancel the named requests in every batch held (queued or running); return those found, each once, in
        the order asked."""
        ...

    def close(self) -> None: ...


@dataclass(eq=False)
class RunningBatch:
    """One submitted batch as the event loop sees it, from ``POST /v1/batch`` until its stream ends: its events
    so far, and what of it is cancelled."""

    cancellation: Cancellation
    _events: asyncio.Queue[EmitItem]
    _forget: Callable[[RunningBatch], None]
    #: Sees each event as it goes out (``runtime.tracing``'s generation spans); None: nobody.
    observer: Callable[[BatchEvent], None] | None = None

    async def lines(self) -> AsyncGenerator[bytes]:
        """NDJSON lines of the batch's events; stopping early (the client left) cancels the batch."""
        try:
            while (event := await self._events.get()) is not None:
                if self.observer is not None:
                    self.observer(event)
                yield event.model_dump_json().encode() + b"\n"
        finally:
            self.close()

    def cancel(self, request_ids: Iterable[str]) -> tuple[str, ...]:
        """Cancel those of ``request_ids`` this batch holds open; return them."""
        taken = self.cancellation.cancel(request_ids)
        if taken.before_start:  # the generation thread will never see these: end them here, at once
            for request_id in taken.ids:
                self._events.put_nowait(cancelled_event(request_id))
            if taken.ids and not self.cancellation.unfinished():
                self._events.put_nowait(None)  # nothing left to run: end the stream now, not when its turn comes
        return taken.ids

    def close(self) -> None:
        """Cancel whatever still runs and leave the registry; idempotent."""
        self.cancellation.cancel_batch()
        self._forget(self)


@dataclass
class Batches:
    """The batches a runner holds, on the event loop."""

    _held: set[RunningBatch] = field(default_factory=set)

    def open(self, requests: Sequence[GenerationRequest]) -> tuple[RunningBatch, Emit]:
        """Register a batch; call on the event loop. ``emit`` hands its events over from any thread."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EmitItem] = asyncio.Queue()
        batch = RunningBatch(Cancellation(r.id for r in requests), events, self._held.discard)

        def emit(item: EmitItem) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                batch.cancellation.cancel_batch()

        self._held.add(batch)  # before any cancel can run: both happen on the event loop
        return batch, emit

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        found: set[str] = set()
        for batch in list(self._held):
            found.update(batch.cancel(request_ids))
        return tuple(i for i in dict.fromkeys(request_ids) if i in found)

    def open_requests(self) -> int:
        """Requests of the held batches without a final event yet: running, waiting, or queued."""
        return sum(len(batch.cancellation.unfinished()) for batch in self._held)

    def __len__(self) -> int:
        return len(self._held)

    def close(self) -> None:
        for batch in list(self._held):
            batch.close()


def internal_error(request_id: str) -> ErrorEvent:
    return ErrorEvent(id=request_id, code="internal", message="the runtime failed while generating")


class Outlet:
    """The generation thread's end of one batch's stream: finishes and tallies every event on its way out, and
    logs the batch's line when it ends."""

    def __init__(self, requests: Sequence[GenerationRequest], cancellation: Cancellation, emit: Emit) -> None:
        self.cancellation = cancellation
        self._emit = emit
        self._size = len(requests)
        #: The clients' request ids, for the batch's line (``runtime.logs``).
        self._request_ids = ",".join(dict.fromkeys(r.request_id for r in requests if r.request_id))
        self._started = time.monotonic()
        self._prompt_tokens = self._completion_tokens = self._errors = 0

    def send(self, event: BatchEvent) -> None:
        """Send one event; a final event of a request cancelled meanwhile goes out as its ``cancelled`` error."""
        if not isinstance(event, TokenEvent) and self.cancellation.finish(event.id):
            event = cancelled_event(event.id)
        if isinstance(event, FinishEvent):
            self._prompt_tokens += event.usage.prompt_tokens
            self._completion_tokens += event.usage.completion_tokens
        self._errors += isinstance(event, ErrorEvent) and event.code != "cancelled"
        self._emit(event)

    def fail(self, request_ids: Iterable[str]) -> None:
        """End these requests with the ``internal`` error (or ``cancelled``, if they were)."""
        for request_id in request_ids:
            self.send(internal_error(request_id))

    def end(self) -> None:
        """End the stream and log the batch's line."""
        self._emit(None)
        seconds = time.monotonic() - self._started
        unfinished = self.cancellation.unfinished() if self.cancellation.batch else []
        cancelled = f", {self.cancellation.cancelled_count} cancelled" if self.cancellation.cancelled_count else ""
        abandoned = f", cancelled with {len(unfinished)} unfinished" if unfinished else ""
        log.info(
            "batch of %d: %d prompt + %d completion tokens in %.3f s (%.1f tokens/s), %d errors%s%s",
            self._size,
            self._prompt_tokens,
            self._completion_tokens,
            seconds,
            self._completion_tokens / max(seconds, 1e-9),
            self._errors,
            cancelled,
            abandoned,
            extra={"request_id": self._request_ids or None},
        )
