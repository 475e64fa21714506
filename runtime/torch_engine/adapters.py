"""The torch engine's LoRA adapters: fetched and read off the generation thread, installed into a device slot when
a row that needs one is admitted, pinned while such rows run, evicted least recently used first.

A row's adapter goes through three places. **Cache**: ``runtime.weights.cache`` resolves its ``source`` into the
node-local cache exactly like a base model's (a directory copied, a hub id downloaded; once per node). **Host**:
its files are read and checked against the base (``runtime.adapters.files``). Both run on one ``adapters`` thread,
so a download never stalls the running batch; rows whose adapter is on its way wait (others pass them: they need
nothing). **Device**: when a row is admitted its adapter is copied into a free slot of the stacks
(``runtime.torch_engine.lora``), evicting the least recently used adapters no running row uses, within
``--max-adapters`` and ``--adapter-bytes``. If every slot is held by adapters of running rows, the row waits for
one to be released (``full``): rows leave as they finish, so the wait is bounded by the longest running request. A
failed fetch or read is remembered for ``FAILURE_MEMORY_S``, so a batch full of requests for a broken adapter
reads it once, and a mended one is taken a little later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from runtime.adapters.files import AdapterWeights, read_adapter
from runtime.adapters.residency import Residency
from runtime.errors import AdapterInvalid, CacheError
from runtime.torch_engine.lora import LoraLayers, linear_shapes
from runtime.weights.cache import CacheVerify, materialise
from wire import AdapterRef

__all__ = ["FAILURE_MEMORY_S", "AdapterKey", "DeviceAdapters", "Wait"]

log = logging.getLogger(__name__)

#: How long a failed fetch or read is answered from memory before the adapter is tried again.
FAILURE_MEMORY_S = 10.0

AdapterKey = tuple[str, str]
#: Why a row cannot join yet: its adapter is being fetched (``loading``), or every slot is held (``full``).
Wait = Literal["loading", "full"]


@dataclass
class _Load:
    future: Future[AdapterWeights]
    started: float
    wakes: set[Callable[[], None]] = field(default_factory=set)
    seconds: float = 0.0


def _first_torch_call() -> None:
    """The adapters thread's first torch call, made at start: it costs ~0.1 s (per-thread set-up inside torch),
    which the first adapter's load paid before (measured: 103 ms of its 115 ms; the next ones 8 ms)."""
    torch.ones(2, 2, dtype=torch.float64).to(torch.float32).sum()


class DeviceAdapters:
    """Adapters of one base model on its device (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        *,
        cache_dir: Path,
        cache_verify: CacheVerify,
        max_adapters: int,
        max_rank: int,
        max_bytes: int | None,
        base_names: tuple[str, ...],
    ) -> None:
        self._layers = LoraLayers(model, max_adapters)
        self._shapes = linear_shapes(model)
        self._dtype: torch.dtype = model.dtype
        self._cache_dir = cache_dir
        self._verify = cache_verify
        self._max_rank = max_rank
        self._base_names = base_names
        self._residency = Residency(max_adapters, max_bytes)
        self._loads: dict[AdapterKey, _Load] = {}
        self._lock = threading.Lock()  # _loads' wakes: the loading thread reads them when a load ends
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="adapters")
        self._loader.submit(_first_torch_call)
        self.loaded: tuple[str, ...] = ()
        """The resident adapters' names, least recently used first (read from any thread; replaced, never changed)."""
        self.last_load: tuple[float, float] | None = None
        """The last adapter loaded: seconds to fetch and read it (adapters thread), and to install it (device)."""

    @property
    def layers(self) -> LoraLayers:
        return self._layers

    def reserve(self, ref: AdapterRef, wake: Callable[[], None]) -> int | Wait:
        """The slot of ``ref``'s adapter, pinned until ``release``; or why the row must wait (``wake`` is called
        from another thread once a load it waits for ends). Raises ``AdapterInvalid``."""
        key = (ref.name, ref.source)
        if key in self._residency:
            return self._pin(key)
        if "," in ref.name:
            raise AdapterInvalid("an adapter name must not hold a comma")
        load = self._load(key, ref, wake)
        if not load.future.done():
            return "loading"
        weights = load.future.result()  # raises the load's AdapterInvalid
        if not self._residency.fits_alone(weights.nbytes):
            raise AdapterInvalid(f"its {weights.nbytes} bytes exceed this runtime's --adapter-bytes")
        evict = self._residency.room_for(weights.nbytes)
        if evict is None:
            return "full"
        for old in evict:
            self._layers.clear(self._residency.evict(old))
        self._install(key, ref.name, weights, load)
        return self._pin(key)

    def release(self, key: AdapterKey) -> None:
        self._residency.unpin(key)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _pin(self, key: AdapterKey) -> int:
        slot = self._residency.pin(key)
        self.loaded = self._residency.names
        return slot

    def _load(self, key: AdapterKey, ref: AdapterRef, wake: Callable[[], None]) -> _Load:
        """The load of ``key`` under way or done (a failure no older than ``FAILURE_MEMORY_S``), else a new one."""
        with self._lock:
            load = self._loads.get(key)
            stale = load is not None and load.future.done() and load.future.exception() is not None
            if load is None or (stale and time.monotonic() - load.started > FAILURE_MEMORY_S):
                load = _Load(self._loader.submit(self._fetch, ref), time.monotonic())
                load.future.add_done_callback(lambda _: self._ended(key))
                self._loads[key] = load
            if not load.future.done():
                load.wakes.add(wake)
            return load

    def _ended(self, key: AdapterKey) -> None:
        with self._lock:
            load = self._loads.get(key)
            wakes = list(load.wakes) if load is not None else []
            if load is not None:
                load.seconds = time.monotonic() - load.started
        for wake in wakes:
            wake()

    def _fetch(self, ref: AdapterRef) -> AdapterWeights:
        """On the adapters thread: the adapter in the node-local cache, read and checked."""
        try:
            directory = materialise(ref.source, self._cache_dir, self._verify).path
        except CacheError as exc:
            log.warning("adapter %s: %s", ref.name, exc)
            raise AdapterInvalid(f"cannot fetch its files from {ref.source}") from exc
        try:
            weights = read_adapter(directory, self._shapes, self._max_rank, self._dtype)
        except AdapterInvalid as exc:
            log.warning("adapter %s (%s) cannot be used: %s", ref.name, ref.source, exc)
            raise
        self._check_base(ref, weights)
        return weights

    def _check_base(self, ref: AdapterRef, weights: AdapterWeights) -> None:
        base = weights.base_model
        if base and not any(base.rstrip("/").rsplit("/", 1)[-1] in name for name in self._base_names):
            log.warning(
                "adapter %s was trained on %s, which is not this runtime's %s (its shapes fit, so it is used)",
                ref.name,
                base,
                ", ".join(self._base_names),
            )

    def _install(self, key: AdapterKey, name: str, weights: AdapterWeights, load: _Load) -> None:
        started = time.monotonic()
        slot = self._residency.add(key, name, weights.nbytes)
        self._layers.install(slot, weights)
        with self._lock:
            del self._loads[key]
        self.last_load = (load.seconds, time.monotonic() - started)
        log.info(
            "adapter %s loaded into slot %d: rank %d, %d layers, %.1f MB; fetch and read %.1f ms, install %.1f ms",
            name,
            slot,
            weights.rank,
            len(weights.modules),
            weights.nbytes / 1e6,
            load.seconds * 1e3,
            (time.monotonic() - started) * 1e3,
        )
