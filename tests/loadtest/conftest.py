"""Helpers for the load tests' tests: run ``python -m loadtest`` as a real process and read its last JSON line (and
its ``summary.json``);
serve a throwaway ASGI app on a real socket; build a tiny random Llama once per session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp

from tests.harness import serve

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON object every command prints as its last line."""
        last = self.stdout.strip().splitlines()[-1]
        parsed: dict[str, Any] = json.loads(last)
        return parsed

    def check(self) -> CliRun:
        assert self.returncode == 0, f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr[-3000:]}"
        return self


def saved_summary(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``out/summary.json`` as (the summary the command printed, the provenance the CLI added to the file)."""
    saved: dict[str, Any] = json.loads((out / "summary.json").read_text())
    provenance: dict[str, Any] = saved.pop("provenance")
    return saved, provenance


def report_row(out: Path) -> str:
    """The README row ``python -m loadtest report`` makes of ``out/summary.json``: so every bench's real summary is
    checked against the keys its row reads (a renamed figure fails here, not at the next README regeneration)."""
    from loadtest import archive

    (row,) = archive.table(archive.load([out])).splitlines()[2:]
    assert "n/a" not in row, row
    return row


async def start_loadtest(*args: str | Path) -> asyncio.subprocess.Process:
    """``python -m loadtest ARGS`` as a process of its own, which a test may interrupt (SIGINT, as Ctrl-C does)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest",
        *(str(a) for a in args),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """SIGINT back to its default, as a terminal's foreground process has it: a shell without job control starts a
    background command (``make test &``) with SIGINT ignored, its children inherit that, and a test's Ctrl-C would
    then be ignored by the command under test (which is how the Ctrl-C test failed in background runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def loadtest(*args: str | Path, timeout_s: float = 60.0) -> CliRun:
    """``python -m loadtest ARGS`` to the end (asynchronously, so servers in this process keep serving)."""
    process = await start_loadtest(*args)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode())


def serving(app: ASGIApp) -> contextlib.AbstractAsyncContextManager[str]:
    """``app`` on a real loopback socket for the duration of the block; yields its base URL."""
    return serve(app, lifespan=False)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama from ``python -m loadtest.models`` (the builder ``loadtest gpu`` uses, at its
    smallest size), built in a child process so this one never imports torch."""
    out = tmp_path_factory.mktemp("models") / "llama-tiny"
    command = [sys.executable, "-m", "loadtest.models", "--size", "tiny", "--device", "cpu", "--out", str(out)]
    built = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return out
