"""Which LoRA adapters hold the device's slots: least recently used first, within a count and a byte budget, and
never one that rows in the running batch use (it is *pinned* from a row's admission until the row leaves).

Pure bookkeeping, no torch: the torch engine asks ``room_for`` before it installs an adapter, evicts what that
names, and ``add``\\s the new one; rows ``pin`` and ``unpin``. Slot 0 is no adapter (the base model), so slots run
from 1 to ``max_adapters``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["Residency", "Resident"]


@dataclass
class Resident:
    name: str
    slot: int
    nbytes: int
    pins: int = 0


class Residency:
    """Adapters on the device by key, in least-recently-used order."""

    def __init__(self, max_adapters: int, max_bytes: int | None = None) -> None:
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._held: OrderedDict[Hashable, Resident] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    @property
    def names(self) -> tuple[str, ...]:
        """The resident adapters' names, least recently used first."""
        return tuple(resident.name for resident in self._held.values())

    @property
    def nbytes(self) -> int:
        return sum(resident.nbytes for resident in self._held.values())

    def pin(self, key: Hashable) -> int:
        """A row uses the adapter from now on: it becomes the most recently used and cannot be evicted; its slot."""
        resident = self._held[key]
        resident.pins += 1
        self._held.move_to_end(key)
        return resident.slot

    def unpin(self, key: Hashable) -> None:
        resident = self._held.get(key)
        if resident is not None and resident.pins > 0:
            resident.pins -= 1

    def fits_alone(self, nbytes: int) -> bool:
        return self.max_adapters > 0 and (self.max_bytes is None or nbytes <= self.max_bytes)

    def room_for(self, nbytes: int) -> list[Hashable] | None:
        """The keys to evict (least recently used unpinned ones first) so that one more adapter of ``nbytes`` fits
        the count and the byte budget; None if it cannot fit until pinned adapters are unpinned."""
        count, held = len(self._held), self.nbytes
        evict: list[Hashable] = []
        for key, resident in self._held.items():
            if count < self.max_adapters and (self.max_bytes is None or held + nbytes <= self.max_bytes):
                break
            if resident.pins == 0:
                evict.append(key)
                count, held = count - 1, held - resident.nbytes
        if count >= self.max_adapters or (self.max_bytes is not None and held + nbytes > self.max_bytes):
            return None
        return evict

    def evict(self, key: Hashable) -> int:
        """Drop an unpinned adapter; its slot, now free."""
        resident = self._held[key]
        if resident.pins:
            raise ValueError(f"adapter {resident.name} is in use by {resident.pins} rows")
        del self._held[key]
        return resident.slot

    def free_slot(self) -> int:
        """The lowest slot no resident adapter holds (1-based); call after ``room_for``'s evictions."""
        taken = {resident.slot for resident in self._held.values()}
        return next(slot for slot in range(1, self.max_adapters + 1) if slot not in taken)

    def add(self, key: Hashable, name: str, nbytes: int) -> int:
        """Make the adapter resident (most recently used, unpinned) in a free slot; its slot."""
        slot = self.free_slot()
        self._held[key] = Resident(name, slot, nbytes)
        return slot
