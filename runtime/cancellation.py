"""What of a batch is cancelled: the whole batch (its client went away) or single requests (``POST /v1/cancel``).

The event loop cancels and the generation thread asks between decoding steps, so the state sits behind one lock.
It also knows which requests are still *open* (no final event yet) and whether the batch has *started* on the
generation thread. That makes a cancel exact: it takes only open requests, and every request it takes ends with
the ``cancelled`` error and nothing else (``finish`` turns a final event that raced the cancel into that error).
A request cancelled before its batch starts is finished at once by whoever cancelled it and never reaches the
engine. The continuous scheduler (``runtime.scheduling.continuous``) asks the same questions of the same class, per
batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import NamedTuple

from wire import ErrorEvent

__all__ = ["Cancellation", "Taken", "cancelled_event"]


def cancelled_event(request_id: str) -> ErrorEvent:
    """The final event of a cancelled request."""
    return ErrorEvent(id=request_id, code="cancelled", message="the request was cancelled")


class Taken(NamedTuple):
    """What one ``Cancellation.cancel`` call took, and whether that was before the batch started (then the
    caller must send the ids' ``cancelled`` events itself: the generation thread will never see them)."""

    ids: tuple[str, ...]
    before_start: bool


class Cancellation:
    """Cancellation state of one batch's requests; thread-safe. ``Cancellation()`` without ids never cancels
    single requests (a warm-up run, say) but can still cancel the whole batch."""

    def __init__(self, request_ids: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._open = dict.fromkeys(request_ids)  # a dict keeps the batch's order, for the log and errors
        self._cancelled: set[str] = set()
        self._batch = False
        self._started = False

    @property
    def batch(self) -> bool:
        """The whole batch is cancelled: stop at the next step without further events."""
        with self._lock:
            return self._batch

    def request(self, request_id: str) -> bool:
        """This request is cancelled: end it with ``cancelled_event`` at the next step instead of a token."""
        with self._lock:
            return request_id in self._cancelled

    @property
    def cancelled_count(self) -> int:
        """How many requests of the batch were cancelled one by one."""
        with self._lock:
            return len(self._cancelled)

    def cancel_batch(self) -> None:
        with self._lock:
            self._batch = True

    def cancel(self, request_ids: Iterable[str]) -> Taken:
        """Cancel those of ``request_ids`` that are still open, so their streams will end with the ``cancelled``
        error; cancelling again while a request runs takes it again (a caller may retry a lost answer). Takes
        nothing once the whole batch is cancelled: its stream is gone, nobody would see the events."""
        with self._lock:
            if self._batch:
                return Taken((), not self._started)
            taken = tuple(dict.fromkeys(i for i in request_ids if i in self._open))
            self._cancelled.update(taken)
            if not self._started:
                for request_id in taken:
                    del self._open[request_id]
            return Taken(taken, not self._started)

    def start(self) -> frozenset[str]:
        """Mark the batch as running; return the ids still to generate (open, not cancelled)."""
        with self._lock:
            self._started = True
            return frozenset(i for i in self._open if i not in self._cancelled)

    def finish(self, request_id: str) -> bool:
        """A final event for ``request_id`` is on its way out; True if the request was cancelled, so the event
        must be ``cancelled_event`` whatever the engine made."""
        with self._lock:
            self._open.pop(request_id, None)
            return request_id in self._cancelled

    def unfinished(self) -> list[str]:
        """Open requests, in batch order: those a failed or abandoned batch leaves without a final event."""
        with self._lock:
            return list(self._open)
