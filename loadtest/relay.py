"""``python -m loadtest bench relay``: streamed tokens through the gateway against straight from the runtime.

A local gateway serves one model with the echo engine (one token per word, no model, so the runtime emits tokens as
fast as it can write them). Its replica is warmed up, then the very same runtime process streams the same requests
two ways, ``--streams`` at a time, each of ``--tokens`` tokens:

- direct: ``POST /v1/batch`` with one streaming request, straight to the replica (NDJSON ``token`` events);
- via gateway: ``POST /v1/completions`` with ``stream: true``: queue, dispatch, the relay of the tokens to the
  gateway replica holding the client, server-sent events.

A *chunk* is one token of streamed text, counted as a word of the text (one echo token each), so that tokens the
gateway relays together in one event count one by one; ``*_events`` counts the events with text.

The sides alternate in rounds (and which goes first alternates too). ``relay_ratio`` is gateway chunks/s over
direct chunks/s; ``ttft_added_p50_ms`` is the gateway's median time to first token minus the direct one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.replicas.client import runtime_headers
from loadtest.children import local_model, running_gateway, scratch_dir, write_config
from loadtest.client import prompt_of
from loadtest.overhead import warm_replica
from loadtest.report import Table, finish
from loadtest.stats import difference, ms, percentile, ratio

__all__ = ["RelayOptions", "add_arguments", "run"]

_MODEL = "echo"


@dataclass(frozen=True)
class RelayOptions:
    streams: int = 16
    tokens: int = 256
    rounds: int = 4
    max_batch_delay: str = "10ms"
    timeout_s: float = 120.0


@dataclass
class Stream:
    """One streamed request as the client saw it: tokens of text (``chunks``: the echo engine's tokens are words,
    so tokens the gateway merged into one event all count), events with text, time to the first, whether it
    ended well."""

    chunks: int = 0
    events: int = 0
    ttft_s: float | None = None
    ok: bool = False


@dataclass
class Side:
    name: str
    url: str
    body: bytes
    read: Callable[[aiohttp.ClientResponse, float, Stream], Awaitable[None]]
    #: The direct side's carry the runtime's token, as the gateway's calls do.
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: int = 0
    events: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    per_round: list[float] = field(default_factory=list)

    @property
    def chunks_per_s(self) -> float | None:
        return self.chunks / self.seconds if self.seconds > 0 else None


async def _read_ndjson(response: aiohttp.ClientResponse, started: float, stream: Stream) -> None:
    async for raw in response.content:
        if not raw.strip():
            continue
        event = json.loads(raw)
        if event.get("type") == "token" and event.get("text"):
            stream.chunks += len(event["text"].split())
            stream.events += 1
            if stream.ttft_s is None:
                stream.ttft_s = time.perf_counter() - started
        elif event.get("type") == "finish":
            stream.ok = True
        elif event.get("type") == "error":
            return


async def _read_sse(response: aiohttp.ClientResponse, started: float, stream: Stream) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line.removeprefix(b"data:").strip()
        if data == b"[DONE]":
            stream.ok = True
            return
        event = json.loads(data)
        if "error" in event:
            return
        if words := sum(len(str(choice.get("text") or "").split()) for choice in event.get("choices") or ()):
            stream.chunks += words
            stream.events += 1
            if stream.ttft_s is None:
                stream.ttft_s = time.perf_counter() - started


async def _one(session: aiohttp.ClientSession, side: Side, timeout_s: float) -> Stream:
    stream = Stream()
    started = time.perf_counter()
    try:
        async with session.post(
            side.url,
            data=side.body,
            headers={"content-type": "application/json", **side.headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if response.status == 200:
                await side.read(response, started, stream)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        stream.ok = False
    return stream


async def _round(session: aiohttp.ClientSession, side: Side, options: RelayOptions, measured: bool) -> None:
    started = time.perf_counter()
    streams = await asyncio.gather(*(_one(session, side, options.timeout_s) for _ in range(options.streams)))
    elapsed = time.perf_counter() - started
    if not measured:
        return
    chunks = sum(s.chunks for s in streams)
    side.chunks += chunks
    side.events += sum(s.events for s in streams)
    side.seconds += elapsed
    side.per_round.append(chunks / elapsed)
    side.ttfts += [s.ttft_s for s in streams if s.ok and s.ttft_s is not None]
    side.errors += sum(not s.ok for s in streams)


def _sides(gateway_url: str, runtime_url: str, options: RelayOptions, token: str) -> list[Side]:
    prompt = prompt_of(options.tokens)
    params = {"max_tokens": options.tokens, "temperature": 0}
    direct = {"model": _MODEL, "requests": [{"id": "r", "prompt": prompt, "params": params, "stream": True}]}
    via = {"model": _MODEL, "prompt": prompt, "stream": True} | params
    return [
        Side("direct", runtime_url + "/v1/batch", json.dumps(direct).encode(), _read_ndjson, runtime_headers(token)),
        Side("gateway", gateway_url + "/v1/completions", json.dumps(via).encode(), _read_sse),
    ]


async def measure(
    session: aiohttp.ClientSession, gateway_url: str, runtime_url: str, options: RelayOptions, token: str
) -> list[Side]:
    sides = _sides(gateway_url, runtime_url, options, token)
    for side in sides:
        await _round(session, side, options, measured=False)
    for round_ in range(options.rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            await _round(session, side, options, measured=True)
    return sides


def summarise(sides: Sequence[Side], options: RelayOptions) -> dict[str, Any]:
    direct, gateway = sides
    d50, g50 = percentile(direct.ttfts, 50), percentile(gateway.ttfts, 50)
    return {
        "direct_chunks_per_s": direct.chunks_per_s,
        "gateway_chunks_per_s": gateway.chunks_per_s,
        "relay_ratio": ratio(gateway.chunks_per_s, direct.chunks_per_s),
        "direct_ttft_p50_ms": ms(d50),
        "gateway_ttft_p50_ms": ms(g50),
        "ttft_added_p50_ms": ms(difference(g50, d50)),
        "direct_chunks": direct.chunks,
        "gateway_chunks": gateway.chunks,
        "direct_events": direct.events,
        "gateway_events": gateway.events,
        "streams": options.streams,
        "tokens": options.tokens,
        "rounds": options.rounds,
        "errors": direct.errors + gateway.errors,
    }


def table(sides: Sequence[Side], summary: dict[str, Any]) -> Table:
    result = Table(
        f"relay: echo runtime, {summary['streams']} concurrent streams of {summary['tokens']} tokens, "
        f"{summary['rounds']} alternating rounds",
        ["side", "chunks/s", "chunks/s by round", "TTFT p50 ms", "TTFT p99 ms", "chunks", "events", "errors"],
    )
    for side in sides:
        rounds = " ".join(f"{r:.0f}" for r in side.per_round)
        result.add(side.name, side.chunks_per_s, rounds, ms(percentile(side.ttfts, 50)),
                   ms(percentile(side.ttfts, 99)), side.chunks, side.events, side.errors)  # fmt: skip
    result.add("gateway/direct", summary["relay_ratio"], None, summary["ttft_added_p50_ms"], None, None, None, None)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams on each side. Default 16")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream. Default 256")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds. Default 4")
    parser.add_argument(
        "--max-batch-delay", default="10ms", help="the model's max-batch-delay in the gateway config. Default 10ms"
    )
    parser.add_argument("--redis-url", help="the gateway's Redis (REDIS_URL). Default: it starts an embedded Valkey")
    parser.add_argument("--out", type=Path, help="write the gateway log and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = RelayOptions(args.streams, args.tokens, args.rounds, args.max_batch_delay)
    model = local_model(
        _MODEL,
        source="none",
        engine="echo",
        idle_timeout="3600s",
        max_batch_size=max(16, options.streams),
        max_batch_delay=options.max_batch_delay,
    )
    with scratch_dir(args.out) as work:
        config = write_config(work / "relay.toml", [model], work / "cache")
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            running_gateway(config, work / "gateway.log", redis_url=args.redis_url) as gateway,
        ):
            runtime_url = await warm_replica(session, gateway.url, gateway.log, options.timeout_s)
            sides = await measure(session, gateway.url, runtime_url, options, gateway.runtime_token)
    summary = summarise(sides, options)
    finish([table(sides, summary)], summary, args.out)
    return 0
