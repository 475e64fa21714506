"""``python -m loadtest bench overhead``: kaltstart's own cost per request, measured side by side.

A local gateway (``python -m gateway``) serves one model with the echo engine, which answers instantly, so
generation costs nothing and what remains is kaltstart's. The gateway's replica is warmed up, then the very same
runtime process is called two ways at the same concurrency (closed loop: each client sends its next request when
the last one is answered):

- direct: ``POST /v1/batch`` with one request, straight to the replica (its URL comes from the gateway's log);
- via gateway: ``POST /v1/completions``: admit, Redis Streams queue, batch dispatch, reply routing.

The two sides alternate in rounds (and which goes first alternates too), so a noisy machine hurts both alike.
``added_*`` is gateway minus direct; ``rps_ratio`` is gateway requests/s over direct requests/s.
``gateway_cpu_ms_per_request`` is the gateway process's own CPU time (``/proc/PID/stat`` utime + stime, all its
threads) over the measured gateway rounds, divided by the requests answered in them: it includes the gateway's
background loops during those rounds, and excludes the runtime replica, the Valkey server and the load generator
(other processes).

``--tracing on`` runs the gateway (and its replica) with tracing on, exporting by OTLP/HTTP to a collector in this
process that discards what it receives; ``--tracing both`` measures off, then on (a fresh gateway each), and reports
``tracing_cpu_added_pct``: how much more gateway CPU per request tracing costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.replicas.client import runtime_headers
from loadtest.children import (
    GatewayProcess,
    LogFile,
    StartError,
    local_model,
    running_gateway,
    scratch_dir,
    write_config,
)
from loadtest.client import post, prompt_of
from loadtest.cluster import process_sample
from loadtest.logs import REPLICA_READY
from loadtest.progress import Progress
from loadtest.report import Table, finish, write_csv
from loadtest.stats import added_latency, ms, percentile, ratio

__all__ = ["OverheadOptions", "add_arguments", "run", "warm_replica"]

_MODEL = "echo"


@dataclass(frozen=True)
class OverheadOptions:
    concurrency: int = 8
    requests: int = 400
    rounds: int = 4
    max_tokens: int = 16
    max_batch_delay: str = "10ms"
    timeout_s: float = 60.0


@dataclass
class Side:
    name: str
    url: str
    body: bytes
    #: The direct side's carry the runtime's token, as the gateway's calls do.
    headers: Mapping[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    per_round: list[float] = field(default_factory=list)
    #: The process whose CPU time is counted while this side runs (the gateway's), if any.
    pid: int | None = None
    #: That process's CPU seconds over the measured rounds.
    cpu_s: float = 0.0

    @property
    def rps(self) -> float | None:
        return len(self.latencies) / self.seconds if self.seconds > 0 else None


async def _closed_loop(
    session: aiohttp.ClientSession, side: Side, count: int, options: OverheadOptions, progress: Progress | None
) -> None:
    """``count`` requests from ``concurrency`` clients, each sending its next as soon as the last returns."""
    remaining = count
    latencies: list[float] = []

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            outcome = await post(session, side.url, side.body, options.timeout_s, side.headers)
            if outcome.ok:
                latencies.append(outcome.latency_s)
            else:
                side.errors += 1
            if progress is not None:
                progress.advance()

    cpu_before = _cpu_s(side.pid)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(options.concurrency):
            group.create_task(client())
    elapsed = time.perf_counter() - started
    if progress is not None:  # warm-up rounds are not measured
        side.latencies += latencies
        side.seconds += elapsed
        side.per_round.append(len(latencies) / elapsed)
        side.cpu_s += _cpu_s(side.pid) - cpu_before


def _cpu_s(pid: int | None) -> float:
    return process_sample(pid).cpu_s if pid is not None else 0.0


def _sides(gateway: GatewayProcess, runtime_url: str, options: OverheadOptions) -> list[Side]:
    prompt = prompt_of(options.max_tokens)
    params = {"max_tokens": options.max_tokens, "temperature": 0}
    direct = {"model": _MODEL, "requests": [{"id": "r", "prompt": prompt, "params": params}]}
    via = {"model": _MODEL, "prompt": prompt} | params
    return [
        Side("direct", runtime_url + "/v1/batch", json.dumps(direct).encode(), runtime_headers(gateway.runtime_token)),
        Side("gateway", gateway.url + "/v1/completions", json.dumps(via).encode(), pid=gateway.child.process.pid),
    ]


async def measure(
    session: aiohttp.ClientSession, gateway: GatewayProcess, runtime_url: str, options: OverheadOptions
) -> list[Side]:
    sides = _sides(gateway, runtime_url, options)
    for side in sides:
        await _closed_loop(session, side, max(50, 4 * options.concurrency), options, None)
        side.errors = 0
    with Progress("overhead", total=options.rounds * len(sides) * options.requests) as progress:
        for round_ in range(options.rounds):
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                await _closed_loop(session, side, options.requests, options, progress)
    return sides


async def warm_replica(session: aiohttp.ClientSession, gateway_url: str, log: LogFile, timeout_s: float) -> str:
    """Cold-start the echo replica with one request; its URL is read from the gateway's log."""
    body = json.dumps({"model": _MODEL, "prompt": "warm up", "max_tokens": 2}).encode()
    outcome = await post(session, gateway_url + "/v1/completions", body, timeout_s)
    if not outcome.ok:
        raise StartError(f"the gateway did not serve a warm-up request ({outcome.error}):\n{log.tail()}")
    match = await log.wait_for(REPLICA_READY, 0, timeout_s=10)
    return str(match.group(2))


def summarise(sides: Sequence[Side], options: OverheadOptions) -> dict[str, Any]:
    direct, gateway = sides
    return {
        **added_latency(direct.latencies, gateway.latencies),
        "direct_rps": direct.rps,
        "gateway_rps": gateway.rps,
        "rps_ratio": ratio(gateway.rps, direct.rps),
        "concurrency": options.concurrency,
        "requests_per_side": options.requests * options.rounds,
        "rounds": options.rounds,
        "errors": direct.errors + gateway.errors,
        "gateway_cpu_ms_per_request": ms(gateway.cpu_s / len(gateway.latencies)) if gateway.latencies else None,
    }


def table(sides: Sequence[Side], summary: dict[str, Any]) -> Table:
    result = Table(
        f"overhead: echo runtime, concurrency {summary['concurrency']}, {summary['requests_per_side']} requests "
        f"per side in {summary['rounds']} alternating rounds; gateway CPU {_per_request(summary)} ms per request",
        ["side", "p50 ms", "p90 ms", "p99 ms", "req/s", "req/s by round", "errors"],
    )
    for side in sides:
        rounds = " ".join(f"{r:.0f}" for r in side.per_round)
        p90 = ms(percentile(side.latencies, 90))
        result.add(side.name, ms(percentile(side.latencies, 50)), p90, ms(percentile(side.latencies, 99)), side.rps,
                   rounds, side.errors)  # fmt: skip
    result.add("added", summary["added_p50_ms"], None, summary["added_p99_ms"], None, None, None)
    return result


def _per_request(summary: dict[str, Any]) -> str:
    cpu_ms = summary["gateway_cpu_ms_per_request"]
    return "-" if cpu_ms is None else f"{cpu_ms:.2f}"


def _wait(args: argparse.Namespace) -> dict[str, str]:
    """The gateway's replica wait: each enqueue waits for that many replicas to acknowledge it (``WAIT``)."""
    return {"KALTSTART_REDIS_WAIT_REPLICAS": str(args.redis_wait_replicas)} if args.redis_wait_replicas else {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients on each side. Default 8")
    parser.add_argument("--requests", type=int, default=400, help="requests per side and round. Default 400")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds. Default 4")
    parser.add_argument("--max-tokens", type=int, default=16, help="echoed words per request. Default 16")
    parser.add_argument(
        "--max-batch-delay", default="10ms", help="the model's max-batch-delay in the gateway. Default 10ms"
    )
    parser.add_argument("--redis-url", help="the gateway's Redis (REDIS_URL). Default: it starts an embedded Valkey")
    parser.add_argument(
        "--redis-wait-replicas",
        type=int,
        default=0,
        help="the gateway's KALTSTART_REDIS_WAIT_REPLICAS (needs a --redis-url primary with replicas). Default 0",
    )
    parser.add_argument("--out", type=Path, help="write overhead.png, samples.csv, logs and summary.json here")
    parser.add_argument(
        "--tracing",
        choices=("off", "on", "both"),
        default="off",
        help="OpenTelemetry tracing of the gateway: off, on (to a local collector that discards the spans), or "
        "both, one after the other. Default off",
    )


@contextlib.asynccontextmanager
async def discarding_collector() -> AsyncIterator[str]:
    """An OTLP/HTTP endpoint that answers every export with 200 and keeps nothing; yields its base URL."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def run(args: argparse.Namespace) -> int:
    options = OverheadOptions(args.concurrency, args.requests, args.rounds, args.max_tokens, args.max_batch_delay)
    if args.tracing != "both":
        return await _run_once(args, options, traced=args.tracing == "on")
    cpu: dict[str, float | None] = {}
    for traced in (False, True):
        out = args.out / ("tracing-on" if traced else "tracing-off") if args.out is not None else None
        summary = await _measured(argparse.Namespace(**vars(args) | {"out": out}), options, traced=traced)
        cpu["on" if traced else "off"] = summary["gateway_cpu_ms_per_request"]
    off, on = cpu["off"], cpu["on"]
    added = round(100 * (on - off) / off, 1) if off and on is not None else None
    print(f"gateway CPU per request: tracing off {off} ms, on {on} ms: {added} % more (noisy: compare several runs)")
    return 0


async def _run_once(args: argparse.Namespace, options: OverheadOptions, *, traced: bool) -> int:
    await _measured(args, options, traced=traced)
    return 0


async def _measured(args: argparse.Namespace, options: OverheadOptions, *, traced: bool) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        env = {}
        if traced:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = await stack.enter_async_context(discarding_collector())
        return await _measure_gateway(args, options, env)


async def _measure_gateway(
    args: argparse.Namespace, options: OverheadOptions, env: Mapping[str, str]
) -> dict[str, Any]:
    model = local_model(
        _MODEL,
        source="none",
        engine="echo",
        idle_timeout="3600s",
        max_batch_size=16,
        max_batch_delay=options.max_batch_delay,
    )
    connector = aiohttp.TCPConnector(limit=0)
    with scratch_dir(args.out) as work:
        config = write_config(work / "overhead.toml", [model], work / "cache")
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            running_gateway(
                config, work / "gateway.log", redis_url=args.redis_url, extra_env={**env, **_wait(args)}
            ) as gateway,
        ):
            runtime_url = await warm_replica(session, gateway.url, gateway.log, options.timeout_s)
            sides = await measure(session, gateway, runtime_url, options)
    summary = summarise(sides, options) | {"tracing": bool(env)}
    if args.out is not None:
        from loadtest.plots import plot_overhead

        plot_overhead({s.name: s.latencies for s in sides}, args.out / "overhead.png")
        rows = ([s.name, latency] for s in sides for latency in s.latencies)
        write_csv(args.out / "samples.csv", ["side", "latency_s"], rows)
    finish([table(sides, summary)], summary, args.out)
    return summary
