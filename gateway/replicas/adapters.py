"""Which LoRA adapters each replica holds loaded on its device: what an adapter's dispatcher prefers when it picks a
replica (a request for a loaded adapter starts at once; elsewhere it waits for the adapter's load first).

Learned, like a pool replica's residency (``gateway.replicas.residency``), from what the replica says anyway: the
``x-kaltstart-adapters`` header of every batch answer (``wire.ADAPTERS_HEADER``) and the ``adapters`` of its
``/readyz`` report. Batches other gateways send change what a replica holds unseen until this gateway's next batch
there: a preference, never a condition (every ready replica of the base can serve every adapter of it). Bounded:
only ready replicas are learned (``EndpointPool.learn_adapters``), each with at most ``MAX_LOADED_ADAPTERS`` names,
and a replica is forgotten when it leaves a ready set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import wire

#: Most adapter names kept per replica (a runtime holds ``--max-adapters``, 8 by default, at most this many); the rest
#: are ignored.
MAX_LOADED_ADAPTERS = wire.MAX_LOADED_ADAPTERS


class LoadedAdapters:
    """The adapters each replica (by URL) last said it holds loaded."""

    def __init__(self) -> None:
        self._loaded: dict[str, frozenset[str]] = {}

    def learn(self, url: str, names: Iterable[str]) -> None:
        fitting = (n for n in names if 0 < len(n) <= wire.MAX_MODEL_NAME_LENGTH)
        self._loaded[url] = frozenset(name for name, _ in zip(fitting, range(MAX_LOADED_ADAPTERS), strict=False))

    def holds(self, url: str, adapter: str) -> bool:
        return adapter in self._loaded.get(url, ())

    def forget(self, url: str) -> None:
        """``url`` left a ready set (it is learned again from its next answer, if it comes back)."""
        self._loaded.pop(url, None)

    def counts(self) -> Iterator[tuple[str, int]]:
        """Each known replica and how many adapters it holds (``kaltstart_replica_adapters_loaded``)."""
        for url, names in self._loaded.items():
            yield url, len(names)
