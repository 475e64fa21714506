"""Work signals: which models have new work, so that nothing polls Redis per model.

Whoever adds an entry to a model's queue (an enqueue, a requeue) publishes ``<gateway id>\\n<model>`` on
``keys.WORK`` from inside the same Lua script, and the gateway that added it tells its own listeners at once
(``notify``). Every gateway replica hears the others' messages on its one pub/sub connection (``received``).

Listeners: each model's dispatcher waits on its model's signal instead of holding a Redis connection in a blocking
read, and the autoscaler looks at a model at rest (no replica above its floor) only after a signal. A pub/sub
message can be lost while the subscription is down, so on every (re)subscription everyone is woken
(``notify_all``): a dispatcher then reads once, the autoscaler looks at every model once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("kaltstart.work")

Listener = Callable[[str], None]


def message(gateway_id: str, model: str) -> str:
    """The ``keys.WORK`` message for new work on ``model`` added by ``gateway_id``."""
    return f"{gateway_id}\n{model}"


class WorkSignals:
    """Per model: an ``asyncio.Event`` set when work arrives, plus listeners told of every signal."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._events: dict[str, asyncio.Event] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(model)`` on every signal (``notify_all`` calls it with ``""``: every model)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def event(self, model: str) -> asyncio.Event:
        """The model's signal. A reader clears it *before* it reads the queue, so that work added during the read
        leaves it set, then waits on it only if the read found nothing."""
        event = self._events.get(model)
        if event is None:
            event = self._events[model] = asyncio.Event()
        return event

    def forget(self, model: str) -> None:
        """The model left the catalog."""
        self._events.pop(model, None)

    def notify(self, model: str) -> None:
        """New work on ``model`` (added here, or announced by another gateway)."""
        event = self._events.get(model)
        if event is not None:
            event.set()
        for listener in list(self._listeners):
            listener(model)

    def notify_all(self) -> None:
        """Signals may have been missed (the subscription was down): every model may have work."""
        for event in self._events.values():
            event.set()
        for listener in list(self._listeners):
            listener("")

    def received(self, data: str) -> None:
        """A ``keys.WORK`` message. Our own were told locally already, at the time they were added."""
        gateway_id, sep, model = data.partition("\n")
        if not sep:
            log.error("dropping malformed work signal: %.200r", data)
            return
        if gateway_id != self.gateway_id:
            self.notify(model)
