"""A small OpenAI-compatible server whose inside the tests can see: ``python -m tests.fake_upstream --port N``.

The real, independent upstream of the tests is ``transformers serve`` (``tests/upstreams.py``); it cannot say how
many requests it holds at once, nor whether it noticed a client that left. This one can (``GET /stats``), for the
tests of what the gateway promises an upstream: at most ``max-concurrency`` requests in flight per replica, and a
client that leaves closes the upstream's connection. It answers every request with ``max_tokens`` words, one every
``--token-delay`` seconds (streamed as chat or completion chunks, or in one body), and refuses a body without
``model`` with a 400 in OpenAI's shape, and one with a ``refuse`` field with a 422 in FastAPI's
(``{"detail": ...}``). ``/stats`` also has the last body it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Stats:
    started: int = 0
    finished: int = 0
    disconnected: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    models: tuple[str, ...] = ()
    last_body: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def _held(stats: Stats) -> AsyncIterator[None]:
    """Counts a request in flight; one cancelled (its client left, so its connection closed) as disconnected."""
    stats.started += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        yield
    except (asyncio.CancelledError, OSError):
        stats.disconnected += 1
        raise
    else:
        stats.finished += 1
    finally:
        stats.in_flight -= 1


def build_app(token_delay_s: float) -> Starlette:
    stats = Stats()

    async def generate(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        if "model" not in body:
            error = {"message": "model is required", "type": "invalid_request_error", "param": "model", "code": None}
            return JSONResponse({"error": error}, status_code=400)
        stats.models += (str(body["model"]),)
        stats.last_body = body
        if "refuse" in body:  # a refusal in FastAPI's shape, not OpenAI's
            return JSONResponse({"detail": f"refused: {body['refuse']}"}, status_code=422)
        chat = request.url.path.endswith("/chat/completions")
        words = [f"w{i}" for i in range(int(body.get("max_tokens", 4)))]
        if body.get("stream"):
            return StreamingResponse(_stream(stats, body["model"], chat, words), media_type="text/event-stream")
        async with _held(stats):
            await asyncio.sleep(token_delay_s * len(words))
        text = " ".join(words)
        choice = {"index": 0, "finish_reason": "length"} | (
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        )
        return JSONResponse({"id": "fake", "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": body["model"], "choices": [choice]})  # fmt: skip

    async def _stream(stats: Stats, model: str, chat: bool, words: list[str]) -> AsyncIterator[bytes]:
        async with _held(stats):
            for word in words:
                await asyncio.sleep(token_delay_s)
                delta = {"delta": {"content": f" {word}"}} if chat else {"text": f" {word}"}
                chunk = {"id": "fake", "model": model, "choices": [{"index": 0, **delta}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def read_stats(request: Request) -> Response:
        return JSONResponse(asdict(stats))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/stats", read_stats),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.05)
    args = parser.parse_args()
    uvicorn.run(build_app(args.token_delay), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
