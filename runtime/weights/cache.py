"""The node-local weight cache: a model's files are fetched from their source once per node, then read from here.

Layout under ``cache_dir``::

    <slug>/                         one complete model, e.g. hf--Qwen--Qwen2.5-0.5B-Instruct--main-1a2b3c4d
    <slug>/.kaltstart-complete.json written last, inside the staging directory, before the rename
    .partial/<slug>.<random>/       a copy in progress (or left behind by a crash; removed on the next fill)
    .locks/<slug>.lock              flock(2) target that serialises fills of one slug

A fill copies (a local directory) or downloads (a Hugging Face id) into a staging directory on the same file
system, fsyncs every file, writes the completion marker, and renames the staging directory into place. Because
the rename is atomic, ``<slug>/`` either does not exist or is complete. Two processes filling the same slug take
turns on the lock; the second finds the marker and reads the first one's copy. Once a slug is complete, starting
again never touches the source.

The marker records every file of the copy with its size and sha256, and a hit is checked against that record
(``verify``): ``size`` (the default) compares the set of files and each one's size, a ``stat`` per file;
``sha256`` also hashes every file, reading all of it once more per start (about 1 s per GB on one core, a disk
slower than that is the limit). A directory that does not match its record, or lacks the marker or its file
list (another tool, an older layout), is treated as absent and filled again. This catches a truncated, grown,
replaced or (with ``sha256``) altered file; it is no defence against a writer who rewrites the marker too, which
is why each model has a cache directory of its own in the Helm chart, and no other model's pod can write to it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runtime.errors import CacheError

__all__ = ["MARKER", "VERIFY_MODES", "CacheVerify", "CachedModel", "Source", "materialise", "parse_source", "resolve"]

#: What a cache hit is checked against the fill's record: the files' sizes, or their sizes and sha256.
CacheVerify = Literal["size", "sha256"]
VERIFY_MODES: tuple[CacheVerify, ...] = ("size", "sha256")

log = logging.getLogger(__name__)

MARKER = ".kaltstart-complete.json"
_PARTIAL = ".partial"
_LOCKS = ".locks"
_CHUNK_BYTES = 16 * 1024 * 1024
_PROGRESS_EVERY_S = 2.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@\S+)?$")
#: Formats the runtime never loads (it reads safetensors); skipping them halves many repositories.
_HUB_IGNORE = ["*.bin", "*.pth", "*.pt", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "original/*"]


@dataclass(frozen=True)
class Source:
    """A parsed ``--source``: an absolute local directory, or a Hugging Face repository and revision."""

    kind: Literal["local", "hub"]
    location: str
    revision: str | None = None

    @property
    def slug(self) -> str:
        """A directory name that is safe on any file system and unique per source (the hash breaks ties)."""
        digest = hashlib.sha256(f"{self.kind}:{self.location}@{self.revision}".encode()).hexdigest()[:8]
        if self.kind == "local":
            return f"local--{_safe(Path(self.location).name)}-{digest}"
        readable = "--".join([self.location.replace("/", "--"), self.revision or "main"])
        return f"hf--{_safe(readable)}-{digest}"


@dataclass(frozen=True)
class CachedModel:
    path: Path
    hit: bool
    """True when the model was already complete in the cache and the source was not read."""
    bytes_copied: int
    seconds: float


def parse_source(source: str) -> Source:
    """A source that starts like a path (``/``, ``.``, ``~``) or names an existing directory is local; anything
    else shaped ``org/name[@revision]`` is a Hugging Face id. Write ``./org/name`` to force a relative path."""
    if not source.strip():
        raise CacheError("the model source is empty")
    looks_like_path = source.startswith(("/", ".", "~"))
    if looks_like_path or Path(source).is_dir() or not _HUB_ID.match(source):
        return Source("local", str(Path(source).expanduser().absolute()))
    repo_id, _, revision = source.partition("@")
    return Source("hub", repo_id, revision or None)


def resolve(source: str, cache_dir: Path, verify: CacheVerify = "size") -> Path:
    """The cached directory holding ``source``'s files, filling the cache first if needed."""
    return materialise(source, cache_dir, verify).path


def materialise(source: str, cache_dir: Path, verify: CacheVerify = "size") -> CachedModel:
    """Like ``resolve``, and says whether it was a hit and how many bytes it copied."""
    started = time.monotonic()
    parsed = parse_source(source)
    target = cache_dir / parsed.slug
    if _is_complete(target, verify):
        log.info("weight cache hit: %s -> %s", source, target)
        return CachedModel(target, hit=True, bytes_copied=0, seconds=time.monotonic() - started)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(cache_dir / _LOCKS / f"{parsed.slug}.lock"):
            if _is_complete(target, verify, quiet=True):
                log.info("weight cache filled by another process meanwhile: %s", target)
                return CachedModel(target, hit=True, bytes_copied=0, seconds=time.monotonic() - started)
            copied = _fill(parsed, cache_dir, target)
    except OSError as exc:
        raise CacheError(f"cannot cache {source} in {cache_dir}: {exc}") from exc
    seconds = time.monotonic() - started
    log.info(
        "weight cache filled: %s -> %s, %.1f MB in %.1f s (%.1f MB/s)",
        source,
        target,
        copied / 1e6,
        seconds,
        copied / 1e6 / max(seconds, 1e-9),
    )
    return CachedModel(target, hit=False, bytes_copied=copied, seconds=seconds)


def _is_complete(target: Path, verify: CacheVerify, *, quiet: bool = False) -> bool:
    """``target`` holds the files its marker records, as ``verify`` checks them."""
    if not target.is_dir():
        return False
    try:
        recorded = json.loads((target / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, dict):
        problem = _mismatch(target, recorded, verify)
    else:
        problem = "no completion marker with a file list"
    if problem is not None and not quiet:
        log.warning("weight cache %s does not match its record (%s): filling it again", target, problem)
    return problem is None


def _mismatch(target: Path, recorded: dict[str, Any], verify: CacheVerify) -> str | None:
    """What differs between ``target``'s files and ``recorded`` (None: nothing)."""
    found = _files(target)
    if set(found) != set(recorded):
        changed = sorted(set(found) ^ set(recorded))
        return f"{len(changed)} file(s) added or missing, e.g. {changed[0]}"
    for name, path in found.items():
        entry = recorded[name]
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("bytes"):
            return f"{name}: size differs"
        if verify == "sha256" and _sha256(path) != entry.get("sha256"):
            return f"{name}: sha256 differs"
    return None


def _files(directory: Path) -> dict[str, Path]:
    """Every file of a model's copy by its relative path, the marker aside."""
    return {
        path.relative_to(directory).as_posix(): path
        for path in directory.rglob("*")
        if path.is_file() and path.name != MARKER
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _inventory(directory: Path) -> dict[str, dict[str, Any]]:
    """The record a hit is checked against: each file's size and sha256 (one more read of the fresh copy)."""
    return {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in _files(directory).items()}


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is filling the weight cache; waiting on %s", lock_path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _fill(source: Source, cache_dir: Path, target: Path) -> int:
    """Fetch into a staging directory and rename it into place; the caller holds the slug's lock."""
    partial_dir = cache_dir / _PARTIAL
    partial_dir.mkdir(exist_ok=True)
    for leftover in partial_dir.glob(f"{source.slug}.*"):
        log.warning("removing a half-filled copy left behind by a crash: %s", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        log.warning("removing %s: it does not match its completion marker", target)
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{source.slug}.", dir=partial_dir))
    try:
        started = time.monotonic()
        if source.kind == "local":
            _copy_tree(Path(source.location), staging)
        else:
            _download(source, staging)
        copied = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        _write_marker(staging, source, copied, time.monotonic() - started)
        _fsync_dir(staging)
        staging.chmod(0o755)
        os.rename(staging, target)
        _fsync_dir(cache_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied


def _copy_tree(source_dir: Path, into: Path) -> None:
    if not source_dir.is_dir():
        raise CacheError(f"model source {source_dir} is not a directory")
    files = sorted(p for p in source_dir.rglob("*") if p.is_file() and not _hidden(p.relative_to(source_dir)))
    progress = _Progress(f"copying {source_dir}", sum(p.stat().st_size for p in files))
    for path in files:
        destination = into / path.relative_to(source_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        _copy_file(path, destination, progress.advance)
        _fsync_dir(destination.parent)
    progress.done()


def _copy_file(source: Path, destination: Path, advance: Callable[[int], None]) -> None:
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := reader.read(_CHUNK_BYTES):
            writer.write(chunk)
            advance(len(chunk))
        writer.flush()
        os.fsync(writer.fileno())


def _download(source: Source, into: Path) -> None:
    """Download a Hugging Face snapshot straight into the staging directory (no second copy in ~/.cache).

    Not exercised by the tests (no network there); it is one call into huggingface_hub, whose own tqdm bars
    show progress. HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured by the library itself."""
    from huggingface_hub import snapshot_download

    log.info("downloading %s@%s from the Hugging Face hub", source.location, source.revision or "main")
    try:
        snapshot_download(source.location, revision=source.revision, local_dir=into, ignore_patterns=_HUB_IGNORE)
    except Exception as exc:  # the hub raises many unrelated types; all mean "could not fetch"
        raise CacheError(f"cannot download {source.location}@{source.revision or 'main'}: {exc}") from exc
    shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's own download bookkeeping
    for path in into.rglob("*"):
        if path.is_file():
            with path.open("rb") as reader:
                os.fsync(reader.fileno())


def _write_marker(directory: Path, source: Source, copied: int, seconds: float) -> None:
    record = {
        "source": source.location,
        "kind": source.kind,
        "revision": source.revision,
        "bytes": copied,
        "seconds": round(seconds, 3),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": _inventory(directory),
    }
    with (directory / MARKER).open("w") as writer:
        json.dump(record, writer, indent=2)
        writer.flush()
        os.fsync(writer.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hidden(relative: Path) -> bool:
    """Dot-files and dot-directories (``.git``, ``.cache``) are bookkeeping, not part of the model."""
    return any(part.startswith(".") for part in relative.parts)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "model"


class _Progress:
    """Logs bytes copied and the rate every couple of seconds while a long copy runs."""

    def __init__(self, what: str, total_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._total = total_bytes
        self._clock = clock
        self._started = self._last = clock()
        self._done = 0

    def advance(self, count: int) -> None:
        self._done += count
        now = self._clock()
        if now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            self._log(now)

    def done(self) -> None:
        self._log(self._clock())

    def _log(self, now: float) -> None:
        rate = self._done / max(now - self._started, 1e-9)
        share = 100.0 * self._done / self._total if self._total else 100.0
        log.info(
            "%s: %.1f of %.1f MB (%.0f%%), %.1f MB/s",
            self._what,
            self._done / 1e6,
            self._total / 1e6,
            share,
            rate / 1e6,
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.weights.cache SOURCE CACHE_DIR``: fill the cache ahead of time (the Helm chart's prefetch
    DaemonSet runs this on every GPU node)."""
    parser = argparse.ArgumentParser(prog="python -m runtime.weights.cache", description=main.__doc__)
    parser.add_argument("source", help="a local directory or a Hugging Face id org/name[@revision]")
    parser.add_argument("cache_dir", type=Path, help="the node-local cache directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cached = materialise(args.source, args.cache_dir)
    except CacheError as exc:
        print(f"python -m runtime.weights.cache: {exc}", file=sys.stderr)
        return 1
    print(f"{args.source}: {cached.path} ({'hit' if cached.hit else 'filled'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
