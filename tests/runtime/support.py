"""Helpers for the runtime's tests: running a batch to completion, and a real ``python -m runtime`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.processes import free_port
from runtime.engine import BatchEvent, Engine
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "ready: serving"


def run_batch(engine: Engine, requests: Sequence[GenerationRequest]) -> list[BatchEvent]:
    return list(engine.generate(requests, threading.Event()))


def finishes(events: Iterable[BatchEvent]) -> dict[str, FinishEvent]:
    return {e.id: e for e in events if isinstance(e, FinishEvent)}


def errors(events: Iterable[BatchEvent]) -> dict[str, ErrorEvent]:
    return {e.id: e for e in events if isinstance(e, ErrorEvent)}


def streamed_text(events: Iterable[BatchEvent], request_id: str) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent) and e.id == request_id)


class RuntimeProcess:
    """``python -m runtime`` on a free loopback port; its log lines are collected so tests can wait on them."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KALTSTART_RUNTIME_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--host", "127.0.0.1", "--port", str(self.port), *flags],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<exited>")
            self._changed.notify_all()

    def wait_for_line(self, fragment: str, timeout_s: float = 60.0) -> str:
        """The first log line containing ``fragment``; fails if the process exits or the deadline passes first."""

        def found() -> str | None:
            return next((line for line in self.lines if fragment in line or line == "<exited>"), None)

        with self._changed:
            line = self._changed.wait_for(found, timeout=timeout_s)
        log = "\n".join(self.lines)
        assert line is not None, f"no {fragment!r} within {timeout_s} s; log so far:\n{log}"
        assert line != "<exited>", f"the runtime exited before logging {fragment!r}:\n{log}"
        return line

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        self.wait_for_line(READY_LINE, timeout_s)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
