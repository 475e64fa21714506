"""Work signals: which models have new work, so that nothing polls Redis per model.

Whoever adds an entry to a model's queue (an enqueue, a requeue) publishes ``<gateway id>\\n<taken>\\n<model>`` on
``keys.WORK`` from inside the same Lua script, and the gateway that added it tells its own listeners at once
(``notify``). Every gateway replica hears the others' messages on its one pub/sub subscription (``received``).

Listeners: each model's dispatcher waits on its model's signal (``wait``) instead of holding a Redis connection in
a blocking read, and the autoscaler looks at a model at rest (no replica above its floor) only after a signal.

``taken`` is 1 when a dispatcher of the adding gateway was waiting for the model's work with room on a replica: it
takes the entry, so the other gateways' dispatchers are not woken to find an empty queue (their autoscalers are
still told). A dispatcher whose read leaves entries behind wakes the others (``backlog``). A pub/sub message can be
lost while the subscription is down, so on every (re)subscription everyone is woken (``notify_all``); and a
dispatcher with a ready replica reads anyway after a while without a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("kaltstart.work")

Listener = Callable[[str], None]


def message(gateway_id: str, model: str, *, taken: bool) -> str:
    """The ``keys.WORK`` message for new work on ``model`` added by ``gateway_id``."""
    return f"{gateway_id}\n{int(taken)}\n{model}"


class WorkSignals:
    """Per model: an ``asyncio.Event`` set when work arrives, plus listeners told of every signal."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._events: dict[str, asyncio.Event] = {}
        self._listeners: list[Listener] = []
        #: Dispatchers of this process waiting for a model's work with room to take it.
        self._waiting: dict[str, int] = {}

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(model)`` on every signal (``notify_all`` calls it with ``""``: every model)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def event(self, model: str) -> asyncio.Event:
        """The model's signal. A reader clears it *before* it reads the queue, so that work added during the read
        leaves it set, then waits on it (``wait``) only if the read emptied the queue."""
        event = self._events.get(model)
        if event is None:
            event = self._events[model] = asyncio.Event()
        return event

    async def wait(self, model: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the model's signal, counted meanwhile as a dispatcher ready to take work
        (``taken_here``)."""
        self._waiting[model] = self._waiting.get(model, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.event(model).wait()
        finally:
            self._waiting[model] -= 1

    def taken_here(self, model: str) -> bool:
        """Whether work added now for ``model`` will be read by a dispatcher of this process at once."""
        return self._waiting.get(model, 0) > 0

    def notify(self, model: str, *, wake: bool = True) -> None:
        """New work on ``model`` (added here, or announced by another gateway); ``wake=False``: the listeners are
        told, the dispatchers left waiting (another gateway takes it)."""
        event = self._events.get(model)
        if event is not None and wake:
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
        gateway_id, taken, model = _parsed(data)
        if model is None:
            log.error("dropping malformed work signal: %.200r", data)
        elif gateway_id != self.gateway_id:
            self.notify(model, wake=not taken)


def _parsed(data: str) -> tuple[str, bool, str | None]:
    parts = data.split("\n", 2)
    if len(parts) == 3 and parts[1] in ("0", "1"):
        return parts[0], parts[1] == "1", parts[2]
    return "", False, None
