"""The disk side of a weight load: dropping files from the page cache, and reading them as fast as one thread can
(the yardstick ``load_efficiency`` is measured against)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["evict", "raw_read"]

_READ_CHUNK = 16 * 1024 * 1024


def evict(paths: Sequence[Path]) -> None:
    """Drop the files' pages from the OS page cache (clean pages only; no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(paths: Sequence[Path]) -> tuple[int, float]:
    """Read the files start to end into one reused buffer: (bytes, seconds)."""
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while count := handle.readinto(view):
                total += count
    return total, time.perf_counter() - started
