"""Reading safetensors checkpoints at disk speed: large parallel reads straight into each tensor's memory.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: ``dtype``, ``shape`` and
``data_offsets`` into the data that follows) and the tensors' bytes back to back. ``read_checkpoint`` parses the
header itself, allocates every tensor once on the target device, and reads the data in chunks of
``CHUNK_BYTES`` on ``threads`` threads (``os.preadv`` releases the GIL). A chunk spans several small tensors
(one scatter read) or part of a large one.

- **CPU**: ``preadv`` lands the bytes in the tensors' own memory; nothing is copied afterwards.
- **CUDA**: ``preadv`` into one of a few reused pinned host buffers, then ``copy_(non_blocking=True)`` to the
  device on the current stream; a buffer is read into again once its copies' event has completed, so reading the
  next chunk overlaps copying the last.

A floating-point tensor stored in another dtype than the one asked for (an fp32 checkpoint served as bf16) is read
as stored and converted on the device as soon as its last byte has landed.

Why not ``safetensors.torch.load_file``: it maps the file and copies each tensor out of the mapping on one thread,
so the disk sees one request at a time (page faults and the kernel's read-ahead), and to a GPU each tensor is
copied from pageable memory, synchronously. On the dev VM's CPU, whose virtual disk one reader keeps busy, both run
at the disk's speed (docs/runtime.md, "Where the load time goes"); the difference is for disks that need several
reads in flight (NVMe, network volumes) and for CUDA.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.errors import CheckpointError, UnknownDtype

__all__ = ["CHUNK_BYTES", "DTYPES", "TensorEntry", "read_checkpoint", "read_header"]

#: Bytes one read asks for, and the size of each pinned buffer on CUDA. On the dev VM (0.55 GB checkpoint, page cache
#: evicted, 4 threads, 8 runs in random order) 16 MiB reads loaded at 0.79 GB/s (median), 64 MiB reads at 0.70.
CHUNK_BYTES = 16 << 20
#: Buffers one scatter read fills at most (Linux's IOV_MAX is 1024).
_MAX_PIECES = 512
#: safetensors' own limit on the JSON header.
_MAX_HEADER_BYTES = 100_000_000

#: safetensors dtype names (the Rust crate's ``Dtype``) that torch can hold.
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: where its bytes lie (``start`` counts from the start of the file)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors ``path`` holds, in file order. Raises ``CheckpointError`` naming the file if the header is
    malformed or the file shorter than it says, ``UnknownDtype`` for a dtype not in ``DTYPES``."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file or is truncated: header of {length} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + length
    entries = [_entry(path, name, info, data_start) for name, info in header.items() if name != "__metadata__"]
    entries.sort(key=lambda e: e.start)
    for entry in entries:
        if entry.start + entry.nbytes > size:
            raise CheckpointError(
                f"{path} is truncated: {entry.name} ends at byte {entry.start + entry.nbytes}, the file has {size}"
            )
    return entries


def _entry(path: Path, name: str, info: Any, data_start: int) -> TensorEntry:
    """One header entry, checked: its byte range must hold exactly its shape in its dtype."""
    try:
        dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        valid = all(isinstance(d, int) and d >= 0 for d in shape) and 0 <= begin <= end
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"{path}: malformed header entry for {name}: {info!r}")
    if dtype_name not in DTYPES:
        raise UnknownDtype(f"{path}: {name} has dtype {dtype_name}, which this reader does not know")
    dtype = DTYPES[dtype_name]
    numel = 1
    for dim in shape:
        numel *= dim
    if end - begin != numel * dtype.itemsize:
        raise CheckpointError(f"{path}: {name} is {end - begin} bytes, its shape {shape} in {dtype_name} needs more")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, end - begin)


@dataclass(frozen=True)
class _Piece:
    """Part of one tensor's bytes: ``length`` bytes from byte ``at`` of tensor ``tensor`` (an index)."""

    tensor: int
    at: int
    length: int


@dataclass(frozen=True)
class _Chunk:
    """One read: consecutive bytes of one file from ``offset``, scattered over ``pieces`` in order."""

    fd: int
    offset: int
    pieces: tuple[_Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.length for p in self.pieces)


def plan_chunks(fd: int, entries: Sequence[TensorEntry], first: int, chunk_bytes: int) -> list[_Chunk]:
    """Reads of at most ``chunk_bytes`` that cover ``entries`` (numbered from ``first``). A chunk ends where the
    data has a gap, so each reads consecutive bytes."""
    chunks: list[_Chunk] = []
    pieces: list[_Piece] = []
    offset = end = 0

    def close() -> None:
        if pieces:
            chunks.append(_Chunk(fd, offset, tuple(pieces)))
            pieces.clear()

    for index, entry in enumerate(entries, start=first):
        if entry.start != end:
            close()
        at = 0
        while at < entry.nbytes:
            if not pieces:
                offset = entry.start + at
            room = chunk_bytes - (entry.start + at - offset)
            length = min(room, entry.nbytes - at)
            pieces.append(_Piece(index, at, length))
            at += length
            if length == room or len(pieces) == _MAX_PIECES:
                close()
        end = entry.start + entry.nbytes
    close()
    return chunks


def _pread_into(fd: int, buffers: Sequence[memoryview], offset: int) -> None:
    """Fill ``buffers`` from the file's bytes at ``offset`` (``preadv`` may return fewer bytes than asked)."""
    pending = [b for b in buffers if len(b)]
    first = 0
    while first < len(pending):
        got = os.preadv(fd, pending[first:], offset)
        if got == 0:
            raise CheckpointError(f"the file ended at byte {offset} while reading its tensors (truncated meanwhile?)")
        offset += got
        while got and first < len(pending):
            if got >= len(pending[first]):
                got -= len(pending[first])
                first += 1
            else:
                pending[first] = pending[first][got:]
                got = 0


class _Landing:
    """The tensors being filled: one byte buffer each on the device, and what is left to land in it. When a
    tensor's last piece has landed it is viewed as its dtype and shape, and converted if another dtype was asked
    for (on the device, ordered after its copies on the current stream)."""

    def __init__(self, entries: Sequence[TensorEntry], dtype: torch.dtype, device: torch.device) -> None:
        self.entries = entries
        self.buffers = [torch.empty(e.nbytes, dtype=torch.uint8, device=device) for e in entries]
        self._dtype = dtype
        self._left = [e.nbytes for e in entries]
        self._lock = threading.Lock()
        self.tensors: dict[str, torch.Tensor] = {}
        for index, entry in enumerate(entries):
            if entry.nbytes == 0:
                self._finish(index)

    def landed(self, pieces: Sequence[_Piece]) -> None:
        for piece in pieces:
            with self._lock:
                self._left[piece.tensor] -= piece.length
                complete = self._left[piece.tensor] == 0
            if complete:
                self._finish(piece.tensor)

    def _finish(self, index: int) -> None:
        entry = self.entries[index]
        tensor = self.buffers[index].view(entry.dtype).reshape(entry.shape)
        if tensor.is_floating_point() and tensor.dtype != self._dtype:
            tensor = tensor.to(self._dtype)
        with self._lock:
            self.tensors[entry.name] = tensor
            self.buffers[index] = torch.empty(0, dtype=torch.uint8)  # the bytes live on in the tensor (or go)


def read_checkpoint(
    files: Sequence[Path], dtype: torch.dtype, device: torch.device, threads: int
) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` on ``device``, floating-point ones as ``dtype``, read on ``threads`` threads.
    Raises ``CheckpointError`` (``UnknownDtype`` for a dtype this reader does not know) before reading anything
    if a header is bad."""
    if sys.byteorder != "little":
        raise UnknownDtype("safetensors stores little-endian tensors; this machine is big-endian")
    headers = [read_header(path) for path in files]
    entries = [entry for header in headers for entry in header]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CheckpointError(f"a tensor name occurs in more than one of {', '.join(p.name for p in files)}")
    landing = _Landing(entries, dtype, device)
    with ExitStack() as stack:
        chunks: list[_Chunk] = []
        first = 0
        for path, header in zip(files, headers, strict=True):
            fd = os.open(path, os.O_RDONLY)
            stack.callback(os.close, fd)
            chunks += plan_chunks(fd, header, first, CHUNK_BYTES)
            first += len(header)
        if device.type == "cuda":
            _read_via_pinned(chunks, landing, threads, device)
        else:
            _read_in_place(chunks, landing, threads)
    return landing.tensors


def _read_in_place(chunks: Sequence[_Chunk], landing: _Landing, threads: int) -> None:
    views = [b.numpy().data for b in landing.buffers]  # the tensors' own memory, writable

    def read(chunk: _Chunk) -> None:
        _pread_into(chunk.fd, [views[p.tensor][p.at : p.at + p.length] for p in chunk.pieces], chunk.offset)
        landing.landed(chunk.pieces)

    _run(read, chunks, threads)


def _read_via_pinned(chunks: Sequence[_Chunk], landing: _Landing, threads: int, device: torch.device) -> None:
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _pinned_buffers(min(threads, len(chunks)) + 1, device) as free:

        def read(chunk: _Chunk) -> None:
            host, view, copied = free.get()
            try:
                torch.cuda.set_device(device)  # a new thread starts on device 0: events and copies go to ours
                if copied is not None:
                    copied.synchronize()  # its last copies are done: it may be overwritten
                _pread_into(chunk.fd, [view[: chunk.nbytes]], chunk.offset)
                at = 0
                for piece in chunk.pieces:
                    target = landing.buffers[piece.tensor][piece.at : piece.at + piece.length]
                    target.copy_(host[at : at + piece.length], non_blocking=True)
                    at += piece.length
                copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                copied.record()
            finally:
                free.put((host, view, copied))
            landing.landed(chunk.pieces)

        try:
            _run(read, chunks, threads)
        finally:
            torch.cuda.synchronize(device)  # every copy has landed before the pinned buffers go


_Pinned = tuple[torch.Tensor, memoryview, "torch.cuda.Event | None"]


@contextmanager
def _pinned_buffers(count: int, device: torch.device) -> Iterator[queue.Queue[_Pinned]]:
    """``count`` page-locked host buffers of ``CHUNK_BYTES``, handed out through a queue of free ones."""
    free: queue.Queue[_Pinned] = queue.Queue()
    with torch.cuda.device(device):
        for _ in range(max(count, 1)):
            host = torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=True)
            free.put((host, host.numpy().data, None))
    yield free


def _run(read: Callable[[_Chunk], None], chunks: Sequence[_Chunk], threads: int) -> None:
    """``read`` every chunk on ``threads`` threads, in file order; the first failure cancels the reads not yet
    started and is raised."""
    if threads <= 1:
        for chunk in chunks:
            read(chunk)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="weights") as pool:
        futures = [pool.submit(read, chunk) for chunk in chunks]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
