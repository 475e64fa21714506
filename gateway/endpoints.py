"""Which runtime replicas of each model are ready to take a batch, as a backend reports them."""

from __future__ import annotations

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
