"""Which runtime replicas of each model are ready (as a backend reports them), and how much room each has.

``ReadyEndpoints`` is the backends' view: the ready replicas' URLs per model. ``EndpointPool`` is one dispatcher's
view of one model's replicas: how many rows (requests) each has in flight from this dispatcher, and how many more
it may take. A *continuous* replica (the runtime's step-level scheduler) takes new requests into its running batch
until its row budget is used; a *static* one runs one batch at a time, so it takes a new batch only when the last
one is done. Requests not sent stay in the queue, where any replica that frees up first can take them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

Listener = Callable[[str], None]


class ReadyEndpoints:
    """Base URLs (``http://host:port``) of the ready replicas per model.

    A backend writes it with ``set``; dispatchers read it and are told of changes through ``subscribe``.
    Replacing a model's whole set at once means readers never see a half-built view.
    """

    def __init__(self) -> None:
        self._urls: dict[str, tuple[str, ...]] = {}
        self._listeners: list[Listener] = []

    def get(self, model: str) -> tuple[str, ...]:
        return self._urls.get(model, ())

    def set(self, model: str, urls: Iterable[str]) -> None:
        new = tuple(sorted(set(urls)))
        if new == self.get(model):
            return
        self._urls[model] = new
        for listener in list(self._listeners):
            listener(model)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(model)`` whenever a model's ready set changes; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


class EndpointPool:
    """Rows in flight per ready replica of one model, from one dispatcher. ``budget``: most rows per replica (the
    model's ``max-batch-size``). A replica counts as static until its ready report says it is continuous."""

    def __init__(self, model: str, endpoints: ReadyEndpoints, budget: int) -> None:
        self._model = model
        self._endpoints = endpoints
        self._budget = budget
        self._rows: dict[str, int] = {}
        self._continuous: set[str] = set()
        self._wake = asyncio.Event()
        self._unsubscribe = endpoints.subscribe(self._changed)

    def _changed(self, model: str) -> None:
        if model == self._model:
            self._wake.set()

    def is_ready(self, url: str) -> bool:
        return url in self._endpoints.get(self._model)

    def set_continuous(self, url: str, continuous: bool) -> None:
        (self._continuous.add if continuous else self._continuous.discard)(url)
        self._wake.set()

    def free(self, url: str) -> int:
        """Rows ``url`` may take now."""
        rows = self._rows.get(url, 0)
        if url in self._continuous:
            return max(0, self._budget - rows)
        return self._budget if rows == 0 else 0

    async def acquire(self) -> tuple[str, int]:
        """The ready replica with the most room (the least loaded), and its free rows; waits until one has room."""
        while True:
            ready = self._endpoints.get(self._model)
            if ready:
                url = max(ready, key=lambda u: (self.free(u), -self._rows.get(u, 0)))
                if (free := self.free(url)) > 0:
                    return url, free
            self._wake.clear()
            await self._wake.wait()

    def start(self, url: str, rows: int) -> None:
        self._rows[url] = self._rows.get(url, 0) + rows

    def finish(self, url: str, rows: int = 1) -> None:
        """``rows`` requests sent to ``url`` are done (answered, failed or put back)."""
        self._rows[url] = max(0, self._rows.get(url, 0) - rows)
        self._wake.set()

    def close(self) -> None:
        self._unsubscribe()
