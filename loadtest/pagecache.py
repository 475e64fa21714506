"""The disk side of a weight load: dropping files from the page cache, checking that they are gone (``mincore``),
and reading them as fast as plain reads can, on one thread or on as many as the loader uses (the yardsticks
``load_efficiency`` and ``load_efficiency_n`` are measured against)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["evict", "raw_read", "resident_bytes"]

_READ_CHUNK = 16 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PROT_READ, _MAP_SHARED = 1, 1
_MAP_FAILED = ctypes.c_void_p(-1).value


def evict(paths: Sequence[Path]) -> None:
    """Drop the files' pages from the OS page cache (clean pages only; no root needed). Advice, not a promise: see
    ``resident_bytes`` for whether it worked."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_bytes(paths: Sequence[Path]) -> int:
    """Bytes of the files now in the page cache, by ``mincore(2)`` on a read-only shared mapping of each (Python's
    ``mmap`` has no ``mincore``; mapping a file reads none of it). Whole pages, so at most one page more per file
    than the file holds; capped at the file's size."""
    libc = _libc()
    total = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        finally:
            os.close(fd)  # the mapping keeps the file
        if address is None or address == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap {path}: {os.strerror(ctypes.get_errno())}")
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}: {os.strerror(ctypes.get_errno())}")
            total += min(size, sum(byte & 1 for byte in vector) * _PAGE)
        finally:
            libc.munmap(ctypes.c_void_p(address), size)
    return total


def raw_read(paths: Sequence[Path], threads: int = 1) -> tuple[int, float]:
    """Read the files start to end in 16 MiB reads: (bytes, seconds). One thread reads them in order into one
    reused buffer; ``threads`` > 1 spreads the same reads (``os.preadv``, which releases the GIL) over that many
    threads, in file order, as the runtime's weight reader does."""
    if threads <= 1:
        return _read_sequentially(paths)
    return _read_on_threads(paths, threads)


def _read_sequentially(paths: Sequence[Path]) -> tuple[int, float]:
    view = memoryview(bytearray(_READ_CHUNK))
    total = 0
    started = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while count := handle.readinto(view):
                total += count
    return total, time.perf_counter() - started


def _read_on_threads(paths: Sequence[Path], threads: int) -> tuple[int, float]:
    local = threading.local()  # one buffer per reading thread

    def read(chunk: tuple[int, int, int]) -> int:
        fd, offset, length = chunk
        if not hasattr(local, "buffer"):
            local.buffer = memoryview(bytearray(_READ_CHUNK))
        return os.preadv(fd, [local.buffer[:length]], offset)

    fds = [os.open(path, os.O_RDONLY) for path in paths]
    try:
        chunks = [
            (fd, offset, min(_READ_CHUNK, size - offset))
            for fd, size in zip(fds, (path.stat().st_size for path in paths), strict=True)
            for offset in range(0, size, _READ_CHUNK)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads, thread_name_prefix="raw-read") as pool:
            total = sum(pool.map(read, chunks))
        return total, time.perf_counter() - started
    finally:
        for fd in fds:
            os.close(fd)
