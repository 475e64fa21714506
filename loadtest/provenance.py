"""Where, when and how a figure was measured: the ``provenance`` every command adds to its ``summary.json``.

``loadtest.cli`` takes a ``Start`` before a command runs (commit, date, machine, load average) and, if the command
wrote ``OUT/summary.json``, adds ``provenance`` to it afterwards (load average again, elapsed time). The JSON line
the command prints is left as it was; the file holds that same object plus the one ``provenance`` key. The
``report`` command (``loadtest.archive``) reads it back.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEY", "Start", "begin", "bench_name", "stamp"]

#: The key the provenance goes under in ``summary.json``; no command's own summary uses it.
KEY = "provenance"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: argparse's own entries in a command's namespace, not arguments of the command.
_NOT_ARGUMENTS = frozenset({"run", "command", "benchmark"})


@dataclass(frozen=True)
class Start:
    bench: str
    argv: tuple[str, ...]
    arguments: dict[str, Any]
    commit: str | None
    dirty: bool | None
    date: str
    load_before: tuple[float, float, float]
    wall_started: float
    monotonic_started: float


def bench_name(args: argparse.Namespace) -> str:
    """``overhead`` for ``bench overhead``, the command's own name otherwise (``simulate``, ``gpu``)."""
    return str(getattr(args, "benchmark", None) or args.command)


def begin(args: argparse.Namespace, argv: list[str]) -> Start:
    commit, dirty = _git()
    return Start(
        bench=bench_name(args),
        argv=tuple(argv),
        arguments={k: _plain(v) for k, v in sorted(vars(args).items()) if k not in _NOT_ARGUMENTS},
        commit=commit,
        dirty=dirty,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        load_before=os.getloadavg(),
        wall_started=time.time(),
        monotonic_started=time.monotonic(),
    )


def stamp(out: Path | None, start: Start) -> bool:
    """Add ``provenance`` to ``out/summary.json`` if this run wrote it (an older file is left alone)."""
    if out is None:
        return False
    path = out / "summary.json"
    if not path.exists() or path.stat().st_mtime < start.wall_started:
        return False
    summary = json.loads(path.read_text())
    summary[KEY] = record(start)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return True


def record(start: Start) -> dict[str, Any]:
    return {
        "bench": start.bench,
        "command": shlex.join(["python", "-m", "loadtest", *start.argv]),
        "argv": list(start.argv),
        "arguments": start.arguments,
        "commit": start.commit,
        "dirty": start.dirty,
        "date": start.date,
        "elapsed_s": round(time.monotonic() - start.monotonic_started, 3),
        "machine": _machine(start.load_before),
        "python": platform.python_version(),
        "torch": _version("torch"),
    }


def _machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def _git() -> tuple[str | None, bool | None]:
    """HEAD and whether tracked files differ from it (untracked files, such as ``--out`` folders, do not count);
    (None, None) outside a git checkout."""
    try:
        head = _run_git("rev-parse", "HEAD")
        changes = _run_git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head.strip(), bool(changes.strip())


def _run_git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=_PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout


def _cpu_model() -> str | None:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or None


def _memory_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)  # kB
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str | None:
    """The installed version, from its metadata: the package is not imported (torch takes seconds)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plain(value: Any) -> Any:
    """An argument as JSON: paths as strings, tuples as lists, anything else unknown as its ``str``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
