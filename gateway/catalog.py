"""The models this gateway serves, and their settings: what ``/v1/models`` lists and routes look up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.errors import ModelNotFound
from gateway.settings import ModelSettings

Listener = Callable[[], None]


class ModelCatalog:
    """Replaced as a whole when the configuration changes (the Kubernetes backend rebuilds it from
    annotations); listeners such as the dispatcher supervisor are told."""

    def __init__(self, models: Iterable[ModelSettings] = ()) -> None:
        self._models: dict[str, ModelSettings] = {}
        self._created: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self.replace(models)

    def replace(self, models: Iterable[ModelSettings]) -> None:
        new = {m.name: m for m in models}
        if new == self._models:
            return
        self._models = new
        now = int(time.time())
        self._created = {name: self._created.get(name, now) for name in new}
        for listener in list(self._listeners):
            listener()

    def get(self, name: str) -> ModelSettings:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(f"The model '{name}' does not exist.", param="model") from None

    def has(self, name: str) -> bool:
        return name in self._models

    def all(self) -> list[ModelSettings]:
        return list(self._models.values())

    def created(self, name: str) -> int:
        return self._created[name]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
