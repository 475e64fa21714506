"""``python -m loadtest bench upstream``: an OpenAI-compatible server asked directly and through kaltstart.

A local gateway serves one model with ``protocol = "openai"``: its replica is the server that ``--server-command``
starts (default ``transformers serve`` on the CPU, transformers' own OpenAI-compatible server) on ``--model``
(default ``.demo-model``, or a fresh demo model). The first request starts it from zero (not measured); then the
very same server process is asked the same chat completions two ways:

- direct: ``POST /v1/chat/completions`` to the replica's URL (from the gateway's log), under the name the server
  serves (``--upstream-model``; default the model's path, the name ``transformers serve`` and vLLM use);
- via gateway: the same body to the gateway under the model's own name: admit, the Redis Streams queue, dispatch,
  one forwarded ``POST`` per request, the answer (or each server-sent event) relayed back, the name put back.

Each round has two phases, both sides measured one after the other (which side goes first alternates from round
to round, so a noisy machine hurts both alike):

- non-streamed: ``--requests`` requests from ``--concurrency`` clients in a closed loop (each sends its next when
  its last is answered): ``direct_rps``, ``gateway_rps``, ``rps_ratio`` (gateway over direct), ``added_p50_ms`` and
  ``added_p99_ms`` (gateway's latency percentile minus direct's);
- streamed: ``--streams`` requests at once with ``stream: true``. A *chunk* is one server-sent event with content
  (``choices[].delta.content`` not empty): ``*_chunks_per_s`` is chunks over the phase's wall time,
  ``relay_ratio`` gateway over direct, ``ttft_added_p50_ms`` the median time to the first chunk, gateway minus
  direct.

Every request is greedy (``temperature: 0``) with the same ``--max-tokens``, on a few fixed prompts, so both sides
generate the same tokens; ``same_text`` says whether every answer to the same prompt (streamed or not) was the
same text on both sides. ``gateway_cpu_ms_per_request`` is, as in ``bench overhead``, the gateway process's own CPU
time over its non-streamed rounds per request answered (the server, Valkey and this load generator are other
processes, not counted). The issue's targets (the gateway adds at most 2 ms at p50 and relays at least 0.8 of the
server's chunks/s) are printed as PASS/MISS; nothing is asserted.

What dominates both sides is the server's own generation (``transformers serve`` on a CPU takes tens of ms per
token), so what the gateway adds is small beside it: that difference is what this measures, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.backends.local.config import COMMAND_FIELDS
from loadtest.children import (
    TRANSFORMERS_SERVE,
    GatewayProcess,
    StartError,
    openai_model,
    running_gateway,
    scratch_dir,
    write_config,
)
from loadtest.client import prompt_of
from loadtest.cluster import process_sample
from loadtest.logs import REPLICA_READY
from loadtest.models import demo_model
from loadtest.progress import Progress
from loadtest.report import finish, write_csv
from loadtest.upstream_report import Side, summarise, tables

__all__ = ["UpstreamOptions", "add_arguments", "bench", "parse_command", "run", "source_of"]

#: The model's name at the gateway (the server serves it under ``upstream_model``).
_MODEL = "upstream"
#: Distinct prompts, taken in turn: enough to compare texts on more than one answer.
_PROMPTS = 4
_PROMPT_WORDS = 12


@dataclass(frozen=True)
class UpstreamOptions:
    concurrency: int = 8
    requests: int = 48
    streams: int = 4
    rounds: int = 2
    max_tokens: int = 16
    #: The server as a local model's ``command`` (``{host}``, ``{port}``, ``{source}``, ``{model}`` filled in).
    server_command: tuple[str, ...] = TRANSFORMERS_SERVE
    #: The name the server serves the model under; None: the model's path.
    upstream_model: str | None = None
    #: From the first request to the server's first answer (its cold start: process, imports, weights).
    start_timeout_s: float = 600.0
    timeout_s: float = 300.0


@dataclass
class Answer:
    """One request as the client saw it."""

    ok: bool
    latency_s: float
    text: str | None = None
    ttft_s: float | None = None
    chunks: int = 0


def _body(model: str, prompt: int, options: UpstreamOptions, stream: bool) -> bytes:
    content = prompt_of(_PROMPT_WORDS, salt=7 * prompt)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": options.max_tokens,
        "temperature": 0,
    }
    return json.dumps(body | ({"stream": True} if stream else {})).encode()


def _side(name: str, base_url: str, model: str, options: UpstreamOptions, pid: int | None = None) -> Side:
    return Side(
        name=name,
        url=base_url + "/v1/chat/completions",
        bodies=[_body(model, p, options, stream=False) for p in range(_PROMPTS)],
        stream_bodies=[_body(model, p, options, stream=True) for p in range(_PROMPTS)],
        pid=pid,
    )


def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    headers = {"content-type": "application/json"}
    return session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def ask(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float) -> Answer:
    """One non-streamed request; ok with status 200 and a message's content."""
    started = time.perf_counter()
    try:
        async with _post(session, url, body, timeout_s) as response:
            payload = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError):
        return Answer(False, time.perf_counter() - started)
    latency = time.perf_counter() - started
    try:
        text = json.loads(payload)["choices"][0]["message"]["content"] if status == 200 else None
    except (ValueError, KeyError, IndexError, TypeError):
        text = None
    return Answer(text is not None, latency, text=str(text) if text is not None else None)


async def ask_streamed(session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float) -> Answer:
    """One streamed request read to ``data: [DONE]``; an error event or an early end is a failure."""
    started = time.perf_counter()
    try:
        async with _post(session, url, body, timeout_s) as response:
            if response.status != 200:
                await response.read()
                return Answer(False, time.perf_counter() - started)
            return await _read_events(response, started)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return Answer(False, time.perf_counter() - started)


async def _read_events(response: aiohttp.ClientResponse, started: float) -> Answer:
    """To ``data: [DONE]``, or to the end of a stream whose last choice finished (``transformers serve`` sends no
    ``[DONE]``; the gateway always does)."""
    parts: list[str] = []
    ttft: float | None = None
    finished = False
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank lines, and the gateway's progress comments during a cold start
        data = line.removeprefix(b"data:").strip()
        if data == b"[DONE]":
            finished = True
            break
        event = json.loads(data)
        if "error" in event:
            return Answer(False, time.perf_counter() - started)
        choices = event.get("choices") or ()
        finished = any(c.get("finish_reason") for c in choices)
        if content := "".join(str((c.get("delta") or {}).get("content") or "") for c in choices):
            parts.append(content)
            ttft = ttft if ttft is not None else time.perf_counter() - started
    if not finished:
        return Answer(False, time.perf_counter() - started)
    return Answer(True, time.perf_counter() - started, text="".join(parts), ttft_s=ttft, chunks=len(parts))


async def _closed_loop(
    session: aiohttp.ClientSession, side: Side, options: UpstreamOptions, progress: Progress | None
) -> None:
    """``--requests`` non-streamed requests from ``--concurrency`` clients; measured unless ``progress`` is None
    (a warm-up)."""
    count = options.requests if progress is not None else options.concurrency
    next_request = 0
    latencies: list[float] = []

    async def client() -> None:
        nonlocal next_request
        while next_request < count:
            prompt, next_request = next_request % _PROMPTS, next_request + 1
            answer = await ask(session, side.url, side.bodies[prompt], options.timeout_s)
            if progress is None:
                continue
            side.keep(prompt, False, answer.text)
            if answer.ok:
                latencies.append(answer.latency_s)
            else:
                side.errors += 1
            progress.advance()

    cpu_before = _cpu_s(side.pid)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(options.concurrency):
            group.create_task(client())
    elapsed = time.perf_counter() - started
    if progress is not None:
        side.cpu_s += _cpu_s(side.pid) - cpu_before
        side.latencies += latencies
        side.seconds += elapsed
        side.rps_by_round.append(len(latencies) / elapsed)


async def _stream_round(
    session: aiohttp.ClientSession, side: Side, options: UpstreamOptions, progress: Progress | None
) -> None:
    """``--streams`` streamed requests at once; measured unless ``progress`` is None."""
    prompts = [i % _PROMPTS for i in range(options.streams)]
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(ask_streamed(session, side.url, side.stream_bodies[p], options.timeout_s) for p in prompts)
    )
    elapsed = time.perf_counter() - started
    if progress is None:
        return
    chunks = sum(a.chunks for a in answers if a.ok)
    side.chunks += chunks
    side.stream_seconds += elapsed
    side.chunks_by_round.append(chunks / elapsed)
    side.ttfts += [a.ttft_s for a in answers if a.ok and a.ttft_s is not None]
    side.errors += sum(not a.ok for a in answers)
    for prompt, answer in zip(prompts, answers, strict=True):
        side.keep(prompt, True, answer.text)
    progress.advance(len(answers))


def _cpu_s(pid: int | None) -> float:
    return process_sample(pid).cpu_s if pid is not None else 0.0


async def _warm_up(session: aiohttp.ClientSession, side: Side, options: UpstreamOptions) -> None:
    """Every prompt once, streamed and not, then a round of each phase, unmeasured: a server's first answer to a
    new shape is slow (``transformers serve`` on a CPU: 0.5 s where a warm one takes 40 ms), and whichever side
    met it first in a measured round would pay for both."""
    for prompt in range(_PROMPTS):
        await ask(session, side.url, side.bodies[prompt], options.timeout_s)
        await ask_streamed(session, side.url, side.stream_bodies[prompt], options.timeout_s)
    await _closed_loop(session, side, options, None)
    await _stream_round(session, side, options, None)


async def measure(session: aiohttp.ClientSession, sides: Sequence[Side], options: UpstreamOptions) -> None:
    for side in sides:
        await _warm_up(session, side, options)
    total = options.rounds * len(sides) * (options.requests + options.streams)
    with Progress("upstream", total=total) as progress:
        for round_ in range(options.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for side in order:
                await _closed_loop(session, side, options, progress)
            for side in order:
                await _stream_round(session, side, options, progress)


async def start_replica(session: aiohttp.ClientSession, gateway: GatewayProcess, options: UpstreamOptions) -> str:
    """Start the model's server from zero with one request through the gateway; its URL, from the gateway's log."""
    warm = _side("warm-up", gateway.url, _MODEL, options)
    first = asyncio.create_task(ask(session, warm.url, warm.bodies[0], options.start_timeout_s))
    try:
        ready = await gateway.log.wait_for(REPLICA_READY, 0, timeout_s=options.start_timeout_s)
        answer = await first
    finally:
        first.cancel()
    if not answer.ok:  # e.g. a 503 from the gateway when the cold start outlasted its budget: the server is up now
        answer = await ask(session, warm.url, warm.bodies[0], options.timeout_s)
    if not answer.ok:
        raise StartError(f"the gateway did not serve a first request to the server:\n{gateway.log.tail()}")
    return str(ready.group(2))


async def bench(
    source: str, work: Path, options: UpstreamOptions, redis_url: str | None = None
) -> tuple[list[Side], dict[str, Any]]:
    """The whole benchmark on the model at ``source`` (a directory, or whatever the server takes): sides, summary."""
    served = options.upstream_model or source
    model = openai_model(
        _MODEL, source, command=options.server_command, upstream_model=served, idle_timeout="3600s",
        # One replica, the one the direct side asks, never holding back what the direct side sends it.
        max_replicas=1, max_concurrency=max(64, options.concurrency, options.streams),
    )  # fmt: skip
    config = write_config(work / "upstream.toml", [model], work / "cache")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        running_gateway(config, work / "gateway.log", redis_url=redis_url) as gateway,
    ):
        replica_url = await start_replica(session, gateway, options)
        sides = [
            _side("direct", replica_url, served, options),
            _side("gateway", gateway.url, _MODEL, options, pid=gateway.child.process.pid),
        ]
        await measure(session, sides, options)
    return sides, summarise(sides, _run(options, source, served))


def _run(options: UpstreamOptions, source: str, served: str) -> dict[str, Any]:
    return {
        "concurrency": options.concurrency,
        "requests_per_side": options.requests * options.rounds,
        "streams": options.streams,
        "streams_per_side": options.streams * options.rounds,
        "rounds": options.rounds,
        "max_tokens": options.max_tokens,
        "server_command": shlex.join(options.server_command),
        "upstream_model": served,
        "model": source,
    }


def parse_command(text: str) -> tuple[str, ...]:
    """``--server-command``: words as a shell splits them; only ``{host}``, ``{port}``, ``{source}`` and
    ``{model}`` may be filled in, and ``{port}`` must be (the gateway picks a free one)."""
    words = tuple(shlex.split(text))
    if not words:
        raise argparse.ArgumentTypeError("an empty command")
    for word in words:
        try:
            word.format_map(dict.fromkeys(COMMAND_FIELDS, ""))
        except (KeyError, ValueError, IndexError) as exc:
            fields = " ".join(f"{{{name}}}" for name in COMMAND_FIELDS)
            raise argparse.ArgumentTypeError(f"{word!r}: {exc!r}; it may use {fields}") from None
    if not any("{port}" in word for word in words):
        raise argparse.ArgumentTypeError("the command must listen on {port}")
    return words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=8, help="non-streamed: concurrent clients. Default 8")
    parser.add_argument("--requests", type=int, default=48, help="non-streamed: per side and round. Default 48")
    parser.add_argument("--streams", type=int, default=4, help="streamed: at once, per side and round. Default 4")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds. Default 2")
    parser.add_argument("--max-tokens", type=int, default=16, help="greedy tokens per request. Default 16")
    parser.add_argument("--model", type=Path, help="model directory ({source}). Default: .demo-model, or a fresh one")
    parser.add_argument(
        "--server-command", type=parse_command, default=TRANSFORMERS_SERVE, metavar="COMMAND",
        help="the OpenAI-compatible server to start, with {host} {port} {source} {model}, e.g. 'vllm serve {source} "
        "--host {host} --port {port} --served-model-name {model}'. Default: transformers serve on the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--upstream-model", help="the name the server serves the model under ({model}). Default: the model's path"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=600.0, metavar="S", help="the server's cold start, at most. Default 600"
    )
    parser.add_argument("--redis-url", help="the gateway's Redis (REDIS_URL). Default: it starts an embedded Valkey")
    parser.add_argument("--out", type=Path, help="write the gateway's log (the server's within), samples.csv, summary")


def source_of(model: Path) -> str:
    """``{source}``: a directory as an absolute path (the gateway runs elsewhere), else a name the server knows."""
    return str(model.resolve() if model.exists() else model)


def options_of(args: argparse.Namespace) -> UpstreamOptions:
    return UpstreamOptions(
        concurrency=args.concurrency, requests=args.requests, streams=args.streams, rounds=args.rounds,
        max_tokens=args.max_tokens, server_command=tuple(args.server_command), upstream_model=args.upstream_model,
        start_timeout_s=args.start_timeout,
    )  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    options = options_of(args)
    with scratch_dir(args.out) as work:
        model = await demo_model(args.model, work)
        sides, summary = await bench(source_of(model), work, options, args.redis_url)
    if args.out is not None:
        rows = ([s.name, latency] for s in sides for latency in s.latencies)
        write_csv(args.out / "samples.csv", ["side", "latency_s"], rows)
    finish(tables(sides, summary), summary, args.out)
    return 0
