"""The models this gateway serves, and their settings: what ``/v1/models`` lists and routes look up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from gateway.errors import ModelNotFound
from gateway.settings import ModelSettings

Listener = Callable[[], None]


class ModelCatalog:
    """Replaced as a whole when the configuration changes (the Kubernetes backend rebuilds it from
    annotations); listeners such as the dispatcher supervisor are told."""

    def __init__(self, models: Iterable[ModelSettings] = ()) -> None:
        self._models: dict[str, ModelSettings] = {}
        self._units: dict[str, str] = {}
        self._created: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self.replace(models)

    def replace(self, models: Iterable[ModelSettings], units: Mapping[str, str] | None = None) -> None:
        """``units`` maps a model to its scaling unit (e.g. the Deployment serving it); by default each model
        is its own unit."""
        new = {m.name: m for m in models}
        new_units = {name: (units or {}).get(name, name) for name in new}
        if new == self._models and new_units == self._units:
            return
        self._models, self._units = new, new_units
        now = int(time.time())
        self._created = {name: self._created.get(name, now) for name in new}
        for listener in list(self._listeners):
            listener()

    def update(
        self, models: Iterable[ModelSettings], units: Mapping[str, str] | None = None, removed: Iterable[str] = ()
    ) -> None:
        """Add or change ``models`` and drop ``removed``, leaving the others as they are (a change to one
        Deployment costs work for its models only); listeners are told if anything changed."""
        changed = False
        for name in removed:
            if self._models.pop(name, None) is not None:
                del self._units[name], self._created[name]
                changed = True
        for settings in models:
            unit = (units or {}).get(settings.name, settings.name)
            if self._models.get(settings.name) == settings and self._units.get(settings.name) == unit:
                continue
            self._models[settings.name], self._units[settings.name] = settings, unit
            self._created.setdefault(settings.name, int(time.time()))
            changed = True
        if changed:
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

    def units(self) -> list[list[ModelSettings]]:
        """Models grouped by the replicas they share, in catalog order."""
        grouped: dict[str, list[ModelSettings]] = {}
        for name, settings in self._models.items():
            grouped.setdefault(self._units[name], []).append(settings)
        return list(grouped.values())

    def created(self, name: str) -> int:
        return self._created[name]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
