"""Where pool replicas hold each model (``wire.Residency``): what a dispatcher prefers when it picks a replica.

A pool runtime serves several models, each *active* (on the device), *parked* (in host memory: a wake away) or
*absent* (on disk: a load away). A request for a model goes best to a replica where it is active, else to one where
it is parked, else to the one with the most free device bytes (the fewest models to move out). What each replica
holds is learned from the headers of every batch answer it sends (so the view follows this gateway's own batches
at no extra call) and from the ready reports a dispatcher reads anyway; it is forgotten when the replica leaves the
model's ready set. Batches other gateways send change a replica's models unseen until this gateway's next batch
there: the view is a preference, never a condition (any ready replica can take any of its models).
"""

from __future__ import annotations

import wire

#: A model's place on a replica, best first (higher is better).
_RANK: dict[wire.ModelState, int] = {"active": 2, "parked": 1, "absent": 0}


class ReplicaResidency:
    """The last ``wire.Residency`` heard from each pool replica (by URL). Bounded by the ready replicas: a URL is
    dropped once it has left every model's ready set it was learned for."""

    def __init__(self) -> None:
        self._known: dict[str, wire.Residency] = {}
        #: URL -> the models for whose ready set it was learned (it is kept while it is in one of them).
        self._models: dict[str, set[str]] = {}

    def learn(self, model: str, url: str, residency: wire.Residency) -> None:
        """``url``, a ready replica of ``model``, says where it holds its models now."""
        self._known[url] = residency
        self._models.setdefault(url, set()).add(model)

    def forget(self, model: str, url: str) -> None:
        """``url`` left ``model``'s ready set."""
        models = self._models.get(url)
        if models is None:
            return
        models.discard(model)
        if not models:
            del self._models[url], self._known[url]

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
