"""Which runtime replicas of each model are ready (as a backend reports them), and how much room each has.

``ReadyEndpoints`` is the backends' view: the ready replicas' URLs per model. ``EndpointPool`` is one dispatcher's
view of one model's replicas: how many rows (requests) each has in flight from this dispatcher, and how many more
it may take. A *continuous* replica (the runtime's step-level scheduler) takes new requests into its running batch
until its row budget is used; a *static* one runs one batch at a time, so it takes a new batch only when the last
one is done. Requests not sent stay in the queue, where any replica that frees up first can take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import wire
from gateway.metrics import PoolReplica
from gateway.replicas.adapters import LoadedAdapters
from gateway.replicas.residency import ReplicaResidency

Listener = Callable[[str], None]

#: How long a replica that refused a connection gets no work (unless the ready set changes first).
SUSPEND_S = 1.0


@dataclass(frozen=True)
class _Announced:
    expires: float
    report: wire.ReadyBody | None


class ReadyEndpoints:
    """Base URLs (``http://host:port``) of the ready replicas per model, from two sources.

    The backend's view (``set``: its readiness probes, or EndpointSlices) and the replicas' own announcements
    (``announce``, see ``wire.Announcement``), which come the moment a replica is ready. An announcement counts
    only for a URL the backend vouches for (``vouch``: a process it started, an address in the model's
    EndpointSlices, ready or not), so nothing else can register; it lapses at its expiry unless renewed, and a
    replica that announces it is stopping gets no more work even while the backend still lists it. Ready and
    stopping reach ``announce`` only once the replica's own ``/readyz`` agreed (``gateway.replicas.announcements``),
    with
    the report it answered.

    Readers get one model's whole set at once (``get``) and are told of changes through ``subscribe``. Where pool
    replicas hold each model (``residency``) and which LoRA adapters each replica holds (``adapters``) are kept here
    too, for as long as they are ready.

    A LoRA adapter served by a base model's replicas (``alias``) has the base's ready set, always: ``get`` and
    ``report`` answer the base's, and the adapter's listeners are told when the base's set changes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._probed: dict[str, frozenset[str]] = {}
        self._vouched: dict[str, frozenset[str]] = {}
        self._announced: dict[str, dict[str, _Announced]] = {}
        self._stopping: dict[str, set[str]] = {}
        self._urls: dict[str, tuple[str, ...]] = {}
        self._since: dict[str, float] = {}
        self._listeners: list[Listener] = []
        #: Listeners to one model only, so a change costs a call per interested party, not per model served.
        self._model_listeners: dict[str, list[Listener]] = {}
        self.residency = ReplicaResidency()
        self.adapters = LoadedAdapters()
        #: Adapter -> its base, and base -> its adapters (``alias``).
        self._bases: dict[str, str] = {}
        self._followers: dict[str, set[str]] = {}

    def get(self, model: str) -> tuple[str, ...]:
        return self._urls.get(self._bases.get(model, model), ())

    def alias(self, adapter: str, base: str | None) -> None:
        """``adapter`` is served by ``base``'s replicas from now on (None: no longer by any)."""
        old = self._bases.pop(adapter, None)
        if old is not None:
            self._followers[old].discard(adapter)
            if not self._followers[old]:
                del self._followers[old]
        if base is not None:
            self._bases[adapter] = base
            self._followers.setdefault(base, set()).add(adapter)
        if old != base:
            self._tell(adapter)

    def set(self, model: str, urls: Iterable[str]) -> None:
        """The backend's ready replicas of ``model`` (replacing what it said before)."""
        self._probed[model] = frozenset(urls)
        self._stopping[model] = self._stopping.get(model, set()) & self._probed[model]
        self._update(model)

    def vouch(self, model: str, urls: Iterable[str]) -> None:
        """URLs of ``model`` whose announcements count (replacing the previous set): announcements of any
        other URL are refused, and ones already taken lapse."""
        self._vouched[model] = frozenset(urls)
        announced = self._announced.get(model, {})
        for url in set(announced) - self._vouched[model]:
            del announced[url]
        self._update(model)

    def vouches(self, model: str, url: str) -> bool:
        """Whether the backend vouches for ``url`` as a replica of ``model``."""
        return url in self._vouched.get(model, ())

    def renew(self, model: str, url: str, ttl_s: float) -> bool:
        """Extend a taken ready announcement (same report) by ``ttl_s``; False if ``url`` has none for ``model``."""
        announced = self._announced.get(model, {})
        entry = announced.get(url)
        if entry is None:
            return False
        announced[url] = _Announced(self._clock() + ttl_s, entry.report)
        return True

    def withdraw(self, model: str, url: str) -> None:
        """``url`` said it is not ready for ``model`` after all: its announcement no longer counts (the backend's
        view of it stands)."""
        model = self._bases.get(model, model)
        if self._announced.get(model, {}).pop(url, None) is not None:
            self._update(model)

    def announce(
        self, model: str, url: str, state: wire.ReplicaState, report: wire.ReadyBody | None, ttl_s: float
    ) -> bool:
        """A replica's announcement; False if refused (a URL the backend does not vouch for)."""
        if url not in self._vouched.get(model, ()):
            return False
        announced = self._announced.setdefault(model, {})
        if state == "ready":
            announced[url] = _Announced(self._clock() + ttl_s, report)
            self._stopping.get(model, set()).discard(url)
        else:
            announced.pop(url, None)
            if state == "stopping":
                self._stopping.setdefault(model, set()).add(url)
        self._update(model)
        return True

    def expire(self) -> None:
        """Forget announcements that were not renewed in time."""
        now = self._clock()
        for model, announced in self._announced.items():
            lapsed = [url for url, entry in announced.items() if entry.expires <= now]
            for url in lapsed:
                del announced[url]
            if lapsed:
                self._update(model)

    def report(self, model: str, url: str) -> wire.ReadyBody | None:
        """The ready report ``url`` announced, if it did."""
        entry = self._announced.get(self._bases.get(model, model), {}).get(url)
        return None if entry is None else entry.report

    def ready_since(self, url: str) -> float | None:
        """Unix time at which ``url`` last became ready (for the time from ready to first dispatch)."""
        return self._since.get(url)

    def pool_replicas(self) -> Iterator[PoolReplica]:
        """The pool replicas, each with the models it is ready for (``Metrics.pools`` reads them at a scrape)."""
        for url, residency, report in self.residency.replicas():
            names = report.models if report is not None else (*residency.active, *residency.parked)
            yield PoolReplica(url, residency, report, [name for name in names if url in self.get(name)])

    def _update(self, model: str) -> None:
        announced = set(self._announced.get(model, {}))
        ready = (self._probed.get(model, frozenset()) | announced) - self._stopping.get(model, set())
        new = tuple(sorted(ready))
        if new == self.get(model):
            return
        old = set(self.get(model))
        for url in set(new) - old:
            self._since[url] = time.time()
        for url in old - set(new):
            self._since.pop(url, None)
            self.residency.forget(model, url)
            self.adapters.forget(url)
        self._urls[model] = new
        self._tell(model)
        for adapter in sorted(self._followers.get(model, ())):
            self._tell(adapter)

    def _tell(self, model: str) -> None:
        for listener in [*self._listeners, *self._model_listeners.get(model, ())]:
            listener(model)

    def subscribe(self, listener: Listener, model: str | None = None) -> Callable[[], None]:
        """Call ``listener(model)`` whenever a model's ready set changes (only ``model``'s, if given); returns an
        unsubscribe function."""
        listeners = self._listeners if model is None else self._model_listeners.setdefault(model, [])
        listeners.append(listener)
        return lambda: self._unsubscribe(listener, model)

    def _unsubscribe(self, listener: Listener, model: str | None) -> None:
        if model is None:
            self._listeners.remove(listener)
            return
        listeners = self._model_listeners[model]
        listeners.remove(listener)
        if not listeners:
            del self._model_listeners[model]


class EndpointPool:
    """Rows in flight per ready replica of one model, from one dispatcher. ``budget``: most rows per replica (the
    model's ``max-batch-size``). A replica counts as static until its ready report says it is continuous."""

    def __init__(self, model: str, endpoints: ReadyEndpoints, budget: int) -> None:
        self._model = model
        self._endpoints = endpoints
        self._budget = budget
        self._rows: dict[str, int] = {}
        self._continuous: set[str] = set()
        self._suspended: dict[str, float] = {}
        self._alone: set[str] = set()
        self._wake = asyncio.Event()
        self._unsubscribe = endpoints.subscribe(self._changed, model=model)

    def _changed(self, model: str) -> None:
        if model == self._model:
            self._suspended.clear()  # the backend's view changed: every ready replica gets another chance
            self._wake.set()

    def suspend(self, url: str) -> None:
        """``url`` refused a connection: send it nothing for ``SUSPEND_S``, or until the ready set changes (a
        replica that died is usually dropped from it within milliseconds)."""
        self._suspended[url] = time.monotonic() + SUSPEND_S

    def is_ready(self, url: str) -> bool:
        return url in self._endpoints.get(self._model)

    def set_continuous(self, url: str, continuous: bool) -> None:
        (self._continuous.add if continuous else self._continuous.discard)(url)
        self._wake.set()

    def is_continuous(self, url: str) -> bool:
        """Whether ``url`` takes requests into its running batch (then no one gains by waiting to fill a batch)."""
        return url in self._continuous

    def free(self, url: str) -> int:
        """Rows ``url`` may take now (none while it runs a request alone, see ``acquire_alone``)."""
        rows = self._rows.get(url, 0)
        if url in self._alone:
            return 0
        if url in self._continuous:
            return max(0, self._budget - rows)
        return self._budget if rows == 0 else 0

    def learn(self, url: str, residency: wire.Residency) -> None:
        """``url`` (a pool replica) said where it holds its models; ignored once it is no longer ready."""
        if self.is_ready(url):
            self._endpoints.residency.learn(self._model, url, residency)

    def learn_adapters(self, url: str, names: Iterable[str]) -> None:
        """``url`` said which LoRA adapters it holds loaded; ignored once it is no longer ready."""
        if self.is_ready(url):
            self._endpoints.adapters.learn(url, names)

    def learn_report(self, url: str, report: wire.PoolReport) -> None:
        """``url`` (a pool replica) answered its ``/readyz`` with ``report``; ignored once it is no longer ready."""
        if self.is_ready(url):
            self._endpoints.residency.learn_report(url, report, self._model)

    async def acquire(self) -> tuple[str, int]:
        """A ready replica with room, and its free rows; waits until one has room. Among those with room: the one
        that holds the adapter (for a LoRA adapter's requests: ``gateway.replicas.adapters``), then the one that
        holds the model best (pool replicas: active, then parked, then the most free device bytes, see
        ``gateway.replicas.residency``), then the one with the most room (the least loaded)."""
        while True:
            ready = self._usable()
            if ready:
                url = max(ready, key=self._suitability)
                if (free := self.free(url)) > 0:
                    return url, free
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # a suspension ends without an event
                await asyncio.wait_for(self._wake.wait(), SUSPEND_S if self._suspended else None)

    def _suitability(self, url: str) -> tuple[bool, bool, int, int, int, int]:
        free, loaded = self.free(url), self._endpoints.adapters.holds(url, self._model)
        return (
            free > 0,
            loaded,
            *self._endpoints.residency.preference(url, self._model),
            free,
            -self._rows.get(url, 0),
        )

    async def acquire_alone(self) -> str:
        """A ready replica with nothing in flight from this dispatcher, which then takes no other work until what
        it is given next is done: for a request whose replica failed before, so that if it is what kills
        replicas, it takes no other request down with it."""
        while True:
            idle = [url for url in self._usable() if self._rows.get(url, 0) == 0 and url not in self._alone]
            if idle:
                self._alone.add(idle[0])
                return idle[0]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # a suspension ends without an event
                await asyncio.wait_for(self._wake.wait(), SUSPEND_S if self._suspended else None)

    def _usable(self) -> list[str]:
        now = time.monotonic()
        for url in [u for u, until in self._suspended.items() if until <= now]:
            del self._suspended[url]
        return [url for url in self._endpoints.get(self._model) if url not in self._suspended]

    def start(self, url: str, rows: int) -> None:
        self._rows[url] = self._rows.get(url, 0) + rows

    def finish(self, url: str, rows: int = 1) -> None:
        """``rows`` requests sent to ``url`` are done (answered, failed or put back)."""
        self._rows[url] = max(0, self._rows.get(url, 0) - rows)
        if self._rows[url] == 0:
            self._alone.discard(url)
        self._wake.set()

    def close(self) -> None:
        self._unsubscribe()
