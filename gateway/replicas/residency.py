"""Where pool replicas hold each model (``wire.Residency``): what a dispatcher prefers when it picks a replica.

A pool runtime serves several models, each *active* (on the device), *parked* (in host memory: a wake away) or
*absent* (on disk: a load away). A request for a model goes best to a replica where it is active, else to one where
it is parked, else to the one with the most free device bytes (the fewest models to move out). What each replica
holds is learned from the headers of every batch answer it sends (so the view follows this gateway's own batches
at no extra call) and from the ready reports a dispatcher reads anyway; it is forgotten when the replica leaves the
model's ready set. Batches other gateways send change a replica's models unseen until this gateway's next batch
there: the view is a preference, never a condition (any ready replica can take any of its models).

The replica's whole report (``wire.PoolReport``: moves and memory, for the metrics) is kept too. It is read from
``/readyz`` whenever a batch answer says the replica's models moved (``on_stale``'s listeners are told; see
``gateway.replicas.poolreports``), so it follows activity: an idle pool is not read at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import wire

#: A model's place on a replica, best first (higher is better).
_RANK: dict[wire.ModelState, int] = {"active": 2, "parked": 1, "absent": 0}


class ReplicaResidency:
    """The last ``wire.Residency`` heard from each pool replica (by URL). Bounded by the ready replicas: a URL is
    dropped once it has left every model's ready set it was learned for."""

    def __init__(self) -> None:
        self._known: dict[str, wire.Residency] = {}
        self._reports: dict[str, wire.PoolReport] = {}
        #: URL -> the models for whose ready set it was learned (it is kept while it is in one of them).
        self._models: dict[str, set[str]] = {}
        self._stale: list[Callable[[str], None]] = []

    def learn(self, model: str, url: str, residency: wire.Residency) -> None:
        """``url``, a ready replica of ``model``, says where it holds its models now. If that is news (or its
        report was never read), its report is stale: the ``on_stale`` listeners are told."""
        stale = self._known.get(url) != residency or url not in self._reports
        self._known[url] = residency
        self._models.setdefault(url, set()).add(model)
        if stale:
            for listener in self._stale:
                listener(url)

    def learn_report(self, url: str, report: wire.PoolReport, model: str | None = None) -> None:
        """``url``'s whole report, as its ``/readyz`` answered: for ``model``'s ready replica ``url``, or (without
        ``model``) for a replica already known, else ignored (it left every ready set meanwhile)."""
        if model is not None:
            self._models.setdefault(url, set()).add(model)
        elif url not in self._known:
            return
        self._known[url] = wire.Residency.of(report)
        self._reports[url] = report

    def on_stale(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(url)`` when a replica's models moved since its report was read."""
        self._stale.append(listener)

    def replicas(self) -> Iterator[tuple[str, wire.Residency, wire.PoolReport | None]]:
        """Every pool replica known: its URL, where it holds its models, and its last report."""
        for url, residency in self._known.items():
            yield url, residency, self._reports.get(url)

    def forget(self, model: str, url: str) -> None:
        """``url`` left ``model``'s ready set."""
        models = self._models.get(url)
        if models is None:
            return
        models.discard(model)
        if not models:
            del self._models[url], self._known[url]
            self._reports.pop(url, None)

    def state(self, url: str, model: str) -> wire.ModelState | None:
        """Where ``url`` last said it holds ``model``; None for a replica not heard of (or not a pool)."""
        residency = self._known.get(url)
        return None if residency is None else residency.state(model)

    def preference(self, url: str, model: str) -> tuple[int, int]:
        """How much ``url`` suits a batch for ``model``: its place there (active > parked > absent), then, where it
        is absent, the device bytes free for it. ``(0, 0)`` for a replica that is not a pool (or not heard of)."""
        residency = self._known.get(url)
        if residency is None:
            return (0, 0)
        rank = _RANK[residency.state(model)]
        return (rank, residency.free_device_bytes if rank == 0 else 0)
