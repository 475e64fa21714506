"""The load generator's HTTP calls, on aiohttp (httpx 0.28's pool contends under concurrency and would measure
itself rather than the server; see FACTS.md). Every call returns an ``Outcome``; nothing here raises for an HTTP
error, a broken stream, a refused connection or a timeout: a load test reports failures, it does not stop on them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["Outcome", "completion", "post", "prompt_of", "stream_completion"]

_TEXT = (
    "the gateway keeps every request in a queue until a runtime is ready to take it and when no one has asked "
    "for a model in a while the runtime goes away so the graphics card is free for someone else"
)
_WORDS = _TEXT.split()


def prompt_of(tokens: int, salt: int = 0) -> str:
    """A prompt of ``tokens`` words (one token each for the echo engine, about one for the demo tokenizer)."""
    return " ".join(_WORDS[(salt + i) % len(_WORDS)] for i in range(max(1, tokens)))


@dataclass(frozen=True)
class Outcome:
    #: HTTP status; None when no response came (connection refused or reset, timeout).
    status: int | None
    #: None on success; else what went wrong, as the key errors are counted under (see ``error_key``).
    error: str | None
    latency_s: float
    #: Time to the first streamed text chunk (streaming calls only).
    ttft_s: float | None = None
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _failure(started: float, status: int | None, key: str) -> Outcome:
    return Outcome(status=status, error=key, latency_s=time.perf_counter() - started)


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float, headers: Mapping[str, str] | None = None
) -> Outcome:
    """One non-streaming JSON POST (``headers`` added), body read to the end. Success means status 200."""
    started = time.perf_counter()
    try:
        async with session.post(
            url,
            data=body,
            headers={"content-type": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            await response.read()
            if response.status != 200:
                return _failure(started, response.status, str(response.status))
            return Outcome(status=200, error=None, latency_s=time.perf_counter() - started)
    except TimeoutError:
        return _failure(started, None, "timeout")
    except aiohttp.ClientError:
        return _failure(started, None, "connection_error")


async def completion(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float) -> Outcome:
    """POST an OpenAI-style request without streaming; the answer must carry ``usage``."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            payload = await response.read()
            if response.status != 200:
                return _failure(started, response.status, str(response.status))
    except TimeoutError:
        return _failure(started, None, "timeout")
    except aiohttp.ClientError:
        return _failure(started, None, "connection_error")
    try:
        tokens = int(json.loads(payload)["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return _failure(started, 200, "bad_response")
    return Outcome(200, None, time.perf_counter() - started, None, tokens)


async def stream_completion(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    timeout_s: float,
    first_token: asyncio.Event | None = None,
) -> Outcome:
    """POST an OpenAI-style request with ``stream: true`` and read its server-sent events to ``[DONE]``.
    ``first_token``, if given, is set when the first text arrives (the request is then running on a replica)."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                await response.read()
                return _failure(started, response.status, str(response.status))
            return await _read_events(response, started, first_token)
    except TimeoutError:
        return _failure(started, None, "timeout")
    except aiohttp.ClientError:
        return _failure(started, None, "connection_error")


async def _read_events(response: aiohttp.ClientResponse, started: float, first_token: asyncio.Event | None) -> Outcome:
    ttft: float | None = None
    tokens: int | None = None
    async for raw in response.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return Outcome(200, None, time.perf_counter() - started, ttft, tokens)
        try:
            event = json.loads(data)
        except ValueError:
            return _failure(started, 200, "stream_error")
        if "error" in event:  # the gateway reports a failure mid-stream as an error event (a cold start's too)
            code = (event["error"] or {}).get("code") if isinstance(event["error"], dict) else None
            return _failure(started, 200, f"stream_error:{code}" if code else "stream_error")
        if ttft is None and any(_text(choice) for choice in event.get("choices") or ()):
            ttft = time.perf_counter() - started
            if first_token is not None:
                first_token.set()
        if event.get("usage"):
            tokens = int(event["usage"].get("completion_tokens", 0))
    return _failure(started, 200, "stream_error")  # the stream ended without [DONE]


def _text(choice: dict[str, Any]) -> str:
    return str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
