"""Runs one dispatcher (``gateway.dispatch.loop``) per catalogued model, and routes cancellations to them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pydantic import ValidationError

from gateway.background import Loop
from gateway.catalog import ModelCatalog
from gateway.dispatch.loop import Dispatcher
from gateway.queue.stream import CancelNotice
from gateway.settings import ModelSettings

log = logging.getLogger("kaltstart.dispatch")


class Dispatchers:
    """Runs one dispatcher per catalogued model; restarts it when the model's settings change."""

    def __init__(
        self, catalog: ModelCatalog, factory: Callable[[ModelSettings], Dispatcher], drain_s: float = 10.0
    ) -> None:
        self._catalog = catalog
        self._factory = factory
        self._drain_s = drain_s
        self._running: dict[str, tuple[Dispatcher, Loop]] = {}
        self._retiring: set[Dispatcher] = set()
        catalog.subscribe(self.sync)

    def sync(self) -> None:
        wanted = {m.name: m for m in self._catalog.all()}
        for name, (dispatcher, loop) in list(self._running.items()):
            if wanted.get(name) != dispatcher.settings:
                del self._running[name]
                asyncio.get_running_loop().create_task(self._retire(dispatcher, loop))
        for name, settings in wanted.items():
            if name not in self._running:
                dispatcher = self._factory(settings)
                loop = Loop(f"dispatcher-{name}", dispatcher.step)
                loop.start()
                self._running[name] = (dispatcher, loop)

    def cancelled(self, notice: str) -> None:
        """A ``CancelNotice`` from ``keys.CANCELS``: the dispatchers of its model stop it if they run it."""
        try:
            cancel = CancelNotice.model_validate_json(notice)
        except ValidationError:
            log.error("dropping malformed cancel notice: %.200r", notice)
            return
        for dispatcher in self._all(cancel.model):
            dispatcher.cancel(cancel.id)

    def held(self, model: str) -> frozenset[str]:
        """Entry ids that the running batches of ``model`` hold (retiring dispatchers included)."""
        return frozenset().union(*(d.held() for d in self._all(model)))

    def _all(self, model: str) -> list[Dispatcher]:
        running = self._running.get(model)
        return [d for d in self._retiring if d.settings.name == model] + ([running[0]] if running else [])

    async def _retire(self, dispatcher: Dispatcher, loop: Loop) -> None:
        self._retiring.add(dispatcher)
        try:
            await loop.stop()
            await dispatcher.drain(self._drain_s)
        finally:
            self._retiring.discard(dispatcher)

    async def stop(self) -> None:
        """Stop reading new work, then let the batches in flight finish (up to ``drain_s``)."""
        running = list(self._running.values())
        self._running.clear()
        await asyncio.gather(*(self._retire(dispatcher, loop) for dispatcher, loop in running))
