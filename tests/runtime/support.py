"""Helpers for the runtime's tests: running a batch to completion, a real ``python -m runtime`` process, and a
batch streamed from one on a background thread while the test does other things (cancels, say)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from gateway.processes import free_port
from runtime.cancellation import Cancellation
from runtime.engine.echo import EchoBatch, EchoEngine, EchoRow
from runtime.engine.interface import BatchEvent, Engine, NextToken
from wire import (
    BATCH_PATH,
    BatchEventAdapter,
    ChatMessage,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "ready: serving"


TEXT = (
    "the gateway keeps every request in a queue until a runtime is ready to take it and when no one has asked "
    "for a model in a while the runtime goes away"
)
WORDS = TEXT.split()


def greedy(request_id: str, *, prompt: str | None = None, chat: str | None = None, **params: Any) -> GenerationRequest:
    messages = (ChatMessage(role="user", content=chat),) if chat is not None else None
    stream = bool(params.pop("stream", False))
    sampling = SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **params})
    return GenerationRequest(id=request_id, prompt=prompt, messages=messages, params=sampling, stream=stream)


def mixed_batch(size: int = 16, **params: Any) -> list[GenerationRequest]:
    """Prompts of 1 to ~30 words, every third one a chat, so rows need very different amounts of padding."""
    requests = []
    for i in range(size):
        text = " ".join(WORDS[: 1 + (i * 7) % len(WORDS)])
        if i % 3 == 2:
            requests.append(greedy(f"r{i}", chat=text, **params))
        else:
            requests.append(greedy(f"r{i}", prompt=text, **params))
    return requests


def alone(engine: Any, request: GenerationRequest) -> FinishEvent:
    return finishes(run_batch(engine, [request]))[request.id]


def sampled(request_id: str, seed: int, prompt: str = "tell me about the weather") -> GenerationRequest:
    params = SamplingParams(max_tokens=24, temperature=1.5, top_p=0.95, seed=seed)
    return GenerationRequest(id=request_id, prompt=prompt, params=params)


def run_batch(engine: Engine, requests: Sequence[GenerationRequest]) -> list[BatchEvent]:
    return list(engine.generate(requests, Cancellation(r.id for r in requests)))


async def read_events(lines: AsyncIterator[bytes], timeout_s: float = 60.0) -> list[BatchEvent]:
    """Every event of a batch's NDJSON lines, to the end of its stream."""

    async def read() -> list[BatchEvent]:
        return [BatchEventAdapter.validate_json(line) async for line in lines]

    return await asyncio.wait_for(read(), timeout=timeout_s)


async def read_until(
    lines: AsyncIterator[bytes],
    done: Callable[[list[BatchEvent]], bool],
    events: list[BatchEvent] | None = None,
    timeout_s: float = 60.0,
) -> list[BatchEvent]:
    """Events of a batch's NDJSON lines, appended to ``events`` (those read before), until ``done`` holds."""
    events = [] if events is None else events
    while not done(events):
        events.append(BatchEventAdapter.validate_json(await asyncio.wait_for(anext(lines), timeout=timeout_s)))
    return events


def finishes(events: Iterable[BatchEvent]) -> dict[str, FinishEvent]:
    return {e.id: e for e in events if isinstance(e, FinishEvent)}


def errors(events: Iterable[BatchEvent]) -> dict[str, ErrorEvent]:
    return {e.id: e for e in events if isinstance(e, ErrorEvent)}


def streamed_text(events: Iterable[BatchEvent], request_id: str) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent) and e.id == request_id)


def tokens_of(events: Iterable[BatchEvent], request_id: str) -> int:
    return sum(isinstance(e, TokenEvent) and e.id == request_id for e in events)


class StreamedBatch:
    """``POST /v1/batch`` read on a background thread: the test waits on what has arrived, with a deadline."""

    def __init__(self, url: str, body: dict[str, object]) -> None:
        self.events: list[BatchEvent] = []
        self.status: int | None = None
        self.headers: httpx.Headers = httpx.Headers()
        self.failure: Exception | None = None
        self.done = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(url + BATCH_PATH, body), daemon=True).start()

    def _read(self, url: str, body: dict[str, object]) -> None:
        try:
            with httpx.stream("POST", url, json=body, timeout=60) as response:
                with self._changed:
                    self.status, self.headers = response.status_code, response.headers
                    self._changed.notify_all()
                for line in filter(None, response.iter_lines()):
                    event = BatchEventAdapter.validate_json(line)
                    with self._changed:
                        self.events.append(event)
                        self._changed.notify_all()
        except httpx.HTTPError as exc:
            self.failure = exc
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()

    def wait_for(self, ready: Callable[[StreamedBatch], bool], timeout_s: float = 60.0) -> list[BatchEvent]:
        """Block until ``ready(self)`` holds; return the events so far (a copy). Fails at the deadline."""
        with self._changed:
            assert self._changed.wait_for(lambda: ready(self), timeout=timeout_s), (
                f"not ready within {timeout_s} s; status {self.status}, events so far: {self.events}"
            )
            return list(self.events)

    def wait_done(self, timeout_s: float = 60.0) -> list[BatchEvent]:
        return self.wait_for(lambda s: s.done, timeout_s)

    def received(self) -> int:
        with self._changed:
            return len(self.events)


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


class HoldingEcho(EchoEngine):
    """An echo engine whose batches make no progress until ``until`` requests have reached it: a test can send
    several batches and know that none finished before the last one arrived (no timing involved)."""

    def __init__(self, until: int) -> None:
        super().__init__()
        self.until = until
        self.prepared = 0

    def prepare(self, request: GenerationRequest) -> EchoRow | ErrorEvent:
        self.prepared += 1
        return super().prepare(request)

    def step_batch(self, *, running_joins: bool = True) -> EchoBatch:
        engine = self

        class Holding(EchoBatch):
            def step(self) -> list[NextToken[EchoRow]]:
                return super().step() if engine.prepared >= engine.until else []

        return Holding()
