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
        #: Models served by a pool runtime (each active, parked or absent on each replica: ``gateway.scaling.pools``).
        self._pooled: set[str] = set()
        self._created: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self.replace(models)

    def replace(
        self, models: Iterable[ModelSettings], units: Mapping[str, str] | None = None, pooled: Iterable[str] = ()
    ) -> None:
        """``units`` maps a model to its scaling unit (e.g. the Deployment serving it); by default each model
        is its own unit. ``pooled``: the models a pool runtime serves."""
        new = {m.name: m for m in models}
        new_units = {name: (units or {}).get(name, name) for name in new}
        new_pooled = set(pooled) & new.keys()
        if new == self._models and new_units == self._units and new_pooled == self._pooled:
            return
        self._models, self._units, self._pooled = new, new_units, new_pooled
        now = int(time.time())
        self._created = {name: self._created.get(name, now) for name in new}
        for listener in list(self._listeners):
            listener()

    def update(
        self,
        models: Iterable[ModelSettings],
        units: Mapping[str, str] | None = None,
        removed: Iterable[str] = (),
        pooled: Iterable[str] = (),
    ) -> None:
        """Add or change ``models`` and drop ``removed``, leaving the others as they are (a change to one
        Deployment costs work for its models only); listeners are told if anything changed. ``pooled``: those of
        ``models`` that a pool runtime serves."""
        changed = False
        for name in removed:
            if self._models.pop(name, None) is not None:
                del self._units[name], self._created[name]
                self._pooled.discard(name)
                changed = True
        in_pool = set(pooled)
        for settings in models:
            name = settings.name
            unit = (units or {}).get(name, name)
            was_pooled = name in self._pooled
            if self._models.get(name) == settings and self._units.get(name) == unit and was_pooled == (name in in_pool):
                continue
            if name in in_pool:
                self._pooled.add(name)
            else:
                self._pooled.discard(name)
            self._models[name], self._units[name] = settings, unit
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

    def pooled(self, name: str) -> bool:
        """Whether a pool runtime serves ``name`` (its model is active, parked or absent on each replica)."""
        return name in self._pooled

    def has(self, name: str) -> bool:
        return name in self._models

    def all(self) -> list[ModelSettings]:
        return list(self._models.values())

    def units(self) -> list[list[ModelSettings]]:
        """Models grouped by the replicas they share, in catalog order but for adapters, which come after the
        models of their unit (the first model's settings are the unit's, and an adapter's base is in its unit)."""
        grouped: dict[str, list[ModelSettings]] = {}
        for name, settings in self._models.items():
            grouped.setdefault(self._units[name], []).append(settings)
        return [sorted(unit, key=lambda m: m.adapter is not None) for unit in grouped.values()]

    def created(self, name: str) -> int:
        return self._created[name]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
