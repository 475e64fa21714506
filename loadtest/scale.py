"""``python -m loadtest bench scale``: what one gateway costs per model it serves, idle or warm.

For each N, a fresh API double (``python -m tests.kube.double``), a fresh Valkey and a gateway with the Kubernetes
backend (``python -m gateway``) serve N models, one Deployment each: one warm (``replicas: 1``, an echo runtime
pod), N-1 idle (``replicas: 0``, no pod). Measured, in this order:

- start-up: gateway process started until ``/v1/models`` lists all N models;
- warm p50/p99: sequential requests to the warm model, with N-1 idle ones beside it;
- idle, over ``--windows`` back-to-back windows of ``--window`` seconds with no requests: the gateway's and the
  Valkey server's CPU (% of one core, from ``/proc``), the gateway's RSS at each window's end, Redis commands/s
  (``total_commands_processed``, less this benchmark's own INFO) and Redis connections (``connected_clients``,
  less this benchmark's own); each window's figures, their median (the old single-window keys) and their spread;
- ``GET /metrics``: median time of a few scrapes;
- edit to visible: one idle Deployment's ``kaltstart.dev/models`` annotation gains a name, until
  ``GET /v1/models/<name>`` answers 200 (median of a few edits);
- with ``--warm W`` (default 150): ``--warm-processes P`` more Deployments (default 4), each one echo pod (its own
  runtime process, endpoint, socket and pool in the gateway) serving about W/P of the W model names (one runtime
  can serve several names, ``--model-name a,b``; each is its own model to the gateway, with its own dispatcher
  and queue), then rounds of one request per warm model at once: answered or not, p50, Redis connections, and
  the idle windows again with W models warm. P = W gives one process per model; fewer keeps 150 warm models
  within a small machine (an echo runtime is a Python process of ~50 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

import wire
from gateway.store.embedded import EmbeddedRedis
from loadtest.children import GatewayProcess, StartError, scratch_dir
from loadtest.client import post
from loadtest.cluster import (
    Cluster,
    ProcessSample,
    RedisSample,
    model_deployment,
    process_sample,
    redis_sample,
    running_cluster,
    running_kube_gateway,
)
from loadtest.report import Table, finish
from loadtest.stats import median, ms, percentile

__all__ = ["ScaleOptions", "add_arguments", "run"]

_WARM = "warm"
#: The idle figures measured in each window; the summary's keys of the same names are their medians.
_IDLE_FIGURES = ("idle_cpu_percent", "idle_valkey_cpu_percent", "idle_redis_ops_per_s", "redis_connections", "rss_mb")
#: How often another process's state is polled where it announces nothing (a new model in /v1/models).
_POLL_S = 0.002


@dataclass(frozen=True)
class ScaleOptions:
    models: tuple[int, ...] = (10, 100, 1000)
    warm: int = 150
    #: Idle windows measured back to back, and each one's length: long enough that work on a period of minutes
    #: (the heartbeat, the janitor, a dispatcher's 10 s fallback read) lands in every window.
    window_s: float = 120.0
    windows: int = 3
    #: Runtime processes (one pod each) the ``warm`` model names are spread over.
    warm_processes: int = 4
    requests: int = 200
    edits: int = 5
    scrapes: int = 5
    rounds: int = 3
    timeout_s: float = 120.0


def _body(model: str) -> bytes:
    return json.dumps({"model": model, "prompt": "hello scale", "max_tokens": 4, "temperature": 0}).encode()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


async def _model_ids(session: aiohttp.ClientSession, gateway: GatewayProcess) -> set[str]:
    status, body = await _get(session, gateway.url + "/v1/models")
    return {m["id"] for m in json.loads(body)["data"]} if status == 200 else set()


async def _model_count(session: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    return len(await _model_ids(session, gateway))


async def _until(check: Any, what: str, timeout_s: float) -> None:
    """Poll ``await check()`` until true: the gateway is another process, and says nothing when it changes."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # noqa: ASYNC110 - another process; nothing to wait on
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise StartError(f"{what}: not within {timeout_s:.0f} s") from None


@dataclass(frozen=True)
class Watched:
    """The processes an idle window watches: the gateway's, and the Valkey server's when this run started it."""

    gateway_pid: int
    valkey_pid: int | None


@dataclass(frozen=True)
class _Sample:
    at: float
    gateway: ProcessSample
    valkey: ProcessSample | None
    redis: RedisSample


async def _sample(redis: Redis, watched: Watched) -> _Sample:
    valkey = None if watched.valkey_pid is None else process_sample(watched.valkey_pid)
    gateway, info = process_sample(watched.gateway_pid), await redis_sample(redis)
    return _Sample(time.perf_counter(), gateway, valkey, info)


def _window(start: _Sample, end: _Sample) -> dict[str, float | None]:
    """One window's figures; consecutive windows share their ends, so each holds exactly one of our INFOs."""
    elapsed = end.at - start.at
    valkey = None if start.valkey is None or end.valkey is None else end.valkey.cpu_s - start.valkey.cpu_s
    return {
        "idle_cpu_percent": 100 * (end.gateway.cpu_s - start.gateway.cpu_s) / elapsed,
        "idle_valkey_cpu_percent": None if valkey is None else 100 * valkey / elapsed,
        "idle_redis_ops_per_s": (end.redis.commands - start.redis.commands - 1) / elapsed,  # less our first INFO
        "redis_connections": end.redis.clients - 1,  # less our own
        "rss_mb": end.gateway.rss_bytes / 2**20,
    }


def summarise_windows(windows: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """Each figure's median over the windows (under its old single-window key), and its ``[min, max]``."""
    result: dict[str, Any] = {"idle_windows": list(windows), "idle_spread": {}}
    for key in _IDLE_FIGURES:
        values = [v for w in windows if (v := w[key]) is not None]
        middle = median(values) if len(values) == len(windows) else None
        counted = middle is not None and middle.is_integer() and all(isinstance(v, int) for v in values)
        result[key] = int(middle) if counted and middle is not None else middle  # connections stay a count
        result["idle_spread"][key] = [min(values), max(values)] if result[key] is not None else None
    return result


async def _idle(redis: Redis, watched: Watched, options: ScaleOptions) -> dict[str, Any]:
    """The gateway left alone for ``windows`` windows of ``window_s``: its and Valkey's CPU, RSS and Redis use."""
    samples = [await _sample(redis, watched)]
    for _ in range(options.windows):
        await asyncio.sleep(options.window_s)  # the measurement window itself
        samples.append(await _sample(redis, watched))
    return summarise_windows([_window(a, b) for a, b in itertools.pairwise(samples)])


async def _latencies(session: aiohttp.ClientSession, url: str, model: str, count: int, timeout_s: float) -> list[float]:
    body, found = _body(model), []
    for _ in range(count):
        outcome = await post(session, url + "/v1/completions", body, timeout_s)
        if not outcome.ok:
            raise StartError(f"a request to {model} failed: {outcome.error}")
        found.append(outcome.latency_s)
    return found


async def _scrapes(session: aiohttp.ClientSession, gateway: GatewayProcess, count: int) -> list[float]:
    found = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = await _get(session, gateway.url + "/metrics")
        if status != 200:
            raise StartError(f"GET /metrics answered {status}")
        found.append(time.perf_counter() - started)
    return found


async def _edits(
    session: aiohttp.ClientSession, cluster: Cluster, gateway: GatewayProcess, count: int, timeout_s: float
) -> list[float]:
    """Add a model name to one idle Deployment, until the gateway serves it; ``count`` times, a new name each."""
    found = []
    for index in range(count):
        name = f"edited-{index}"

        async def visible(url: str = f"{gateway.url}/v1/models/{name}") -> bool:
            return (await _get(session, url))[0] == 200

        started = time.perf_counter()
        await cluster.annotate("idle-00001", {"kaltstart.dev/models": f"idle-00001,{name}"})
        await _until(visible, f"model {name} after an edit", timeout_s)
        found.append(time.perf_counter() - started)
    return found


async def _fleet(
    session: aiohttp.ClientSession, cluster: Cluster, gateway: GatewayProcess, redis: Redis, watched: Watched,
    options: ScaleOptions, cache: Path,
) -> dict[str, Any]:  # fmt: skip
    """W more models on P warm pods: rounds of one request per model at once, then the gateway at rest."""
    names = [f"fleet-{i:04d}" for i in range(options.warm)]
    deployments = fleet_deployments(names, options.warm_processes, cache)
    await cluster.create(deployments)

    async def listed() -> bool:  # by name: the edits' names count too, and the pods' Deployments arrive one by one
        return set(names) <= await _model_ids(session, gateway)

    await _until(listed, f"{options.warm} warm models listed", options.timeout_s)
    rounds: list[list[Any]] = []
    for _ in range(options.rounds):
        rounds.append(
            await asyncio.gather(
                *(post(session, gateway.url + "/v1/completions", _body(m), options.timeout_s) for m in names)
            )
        )
    warmed = [o.latency_s for round_ in rounds[1:] for o in round_ if o.ok]
    failed = [o for round_ in rounds for o in round_ if not o.ok]
    at_rest = await _idle(redis, watched, options)
    return {
        "warm_models": options.warm,
        "warm_processes": len(deployments),
        "requests": sum(len(r) for r in rounds),
        "answered": sum(len(r) for r in rounds) - len(failed),
        "errors": sorted({str(o.error) for o in failed}),
        "p50_ms": ms(percentile(warmed, 50)),
        "p99_ms": ms(percentile(warmed, 99)),
        **at_rest,
    }


def fleet_deployments(names: Sequence[str], processes: int, cache: Path) -> list[dict[str, Any]]:
    """``names`` dealt round-robin over ``processes`` Deployments of one echo pod each (at most one per name)."""
    count = max(1, min(processes, len(names)))
    return [model_deployment(f"fleet-p{p:03d}", names[p::count], 1, cache) for p in range(count)]


@contextlib.asynccontextmanager
async def _redis(url: str | None) -> AsyncIterator[tuple[str, Redis, int | None]]:
    """A fresh embedded Valkey per run (so its counters and CPU are this run's, and its pid is known), or ``url``
    flushed (its server's CPU is then not measured)."""
    with contextlib.ExitStack() as stack:
        pid = None
        if url is None:
            embedded = EmbeddedRedis()
            url, pid = stack.enter_context(embedded), embedded.pid
        redis = Redis.from_url(url)
        try:
            await redis.flushall()
            yield url, redis, pid
        finally:
            await redis.aclose()


async def measure(n: int, options: ScaleOptions, work: Path, redis_url: str | None) -> dict[str, Any]:
    """One N, from a fresh API double, Valkey and gateway."""
    cache = work / "cache"
    idle = [model_deployment(f"idle-{i:05d}", [f"idle-{i:05d}"], 0, cache) for i in range(1, n)]
    async with (
        running_cluster(work / f"n{n}") as cluster,
        _redis(redis_url) as (url, redis, valkey_pid),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        await cluster.create([model_deployment(_WARM, [_WARM], 1, cache), *idle])
        started = time.perf_counter()
        async with running_kube_gateway(cluster, url, work / f"n{n}" / "gateway.log", options.timeout_s) as gateway:

            async def listed() -> bool:
                return await _model_count(session, gateway) >= n

            await _until(listed, f"{n} models listed", options.timeout_s)
            watched = Watched(gateway.child.process.pid, valkey_pid)
            result: dict[str, Any] = {"models": n, "startup_s": time.perf_counter() - started}
            await _latencies(session, gateway.url, _WARM, 1, options.timeout_s)  # waits for the warm pod
            warm = await _latencies(session, gateway.url, _WARM, options.requests, options.timeout_s)
            result |= {"warm_p50_ms": ms(percentile(warm, 50)), "warm_p99_ms": ms(percentile(warm, 99))}
            result |= await _idle(redis, watched, options)
            scrapes = await _scrapes(session, gateway, options.scrapes)
            result["metrics_ms"] = ms(percentile(scrapes, 50))
            edits = await _edits(session, cluster, gateway, options.edits, options.timeout_s)
            result |= {"edit_to_visible_ms": ms(percentile(edits, 50)), "edit_to_visible_max_ms": ms(max(edits))}
            if options.warm > 0:
                result["fleet"] = await _fleet(session, cluster, gateway, redis, watched, options, cache)
    return result


def _windows(options: ScaleOptions) -> str:
    return f"{options.windows} windows of {options.window_s:g} s"


def _spread(figures: dict[str, Any], key: str) -> str | None:
    spread = figures["idle_spread"][key]
    return None if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}"


def tables(runs: Sequence[dict[str, Any]], options: ScaleOptions) -> list[Table]:
    idle = Table(
        f"scale: one gateway, Kubernetes backend (API double), N models, one warm; idle: median of {_windows(options)}",
        ["N", "start-up s", "RSS MB", "idle CPU %", "(min-max)", "Valkey CPU %", "Redis ops/s", "Redis conns",
         "edit→visible ms", "/metrics ms", "warm p50 ms", "warm p99 ms"],
    )  # fmt: skip
    for r in runs:
        idle.add(r["models"], r["startup_s"], r["rss_mb"], r["idle_cpu_percent"], _spread(r, "idle_cpu_percent"),
                 r["idle_valkey_cpu_percent"], r["idle_redis_ops_per_s"], r["redis_connections"],
                 r["edit_to_visible_ms"], r["metrics_ms"], r["warm_p50_ms"], r["warm_p99_ms"])  # fmt: skip
    result = [idle]
    fleets = [(r["models"], r["fleet"]) for r in runs if r.get("fleet")]
    if fleets:
        warm = Table(
            f"scale: {options.warm} more models warm on {min(options.warm_processes, options.warm)} echo pods, "
            f"{options.rounds} rounds of one request per model at once; idle: median of {_windows(options)}",
            ["N", "answered", "requests", "p50 ms", "p99 ms", "Redis conns", "idle CPU %", "(min-max)",
             "Valkey CPU %", "Redis ops/s", "RSS MB"],
        )  # fmt: skip
        for n, f in fleets:
            warm.add(n, f["answered"], f["requests"], f["p50_ms"], f["p99_ms"], f["redis_connections"],
                     f["idle_cpu_percent"], _spread(f, "idle_cpu_percent"), f["idle_valkey_cpu_percent"],
                     f["idle_redis_ops_per_s"], f["rss_mb"])  # fmt: skip
        result.append(warm)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", default="10,100,1000", help="comma-separated model counts N, one run each. Default 10,100,1000"
    )
    parser.add_argument("--warm", type=int, default=150, help="more models warm on one pod (0: skip). Default 150")
    parser.add_argument(
        "--window", type=float, default=120.0, help="seconds of each idle window. Default 120 (2 minutes)"
    )
    parser.add_argument(
        "--windows", type=int, default=3, help="idle windows, back to back; each figure's median is reported. Default 3"
    )
    parser.add_argument(
        "--warm-processes", type=int, default=None,
        help="echo runtime processes (one pod each) the --warm models are spread over (--warm: one per model). "
        f"Default 4, or more so that no pod serves more than {wire.MAX_ANNOUNCED_MODELS} names (a runtime's limit)",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=200, help="sequential requests to the warm model. Default 200")
    parser.add_argument("--edits", type=int, default=5, help="annotation edits timed. Default 5")
    parser.add_argument("--scrapes", type=int, default=5, help="GET /metrics timed. Default 5")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds over the warm models (the first warms). Default 3"
    )
    parser.add_argument("--redis-url", help="a Redis to use (flushed!). Default: an embedded Valkey per N")
    parser.add_argument("--out", type=Path, help="write logs and summary.json here")


def options_of(args: argparse.Namespace) -> ScaleOptions:
    models = tuple(int(n) for n in args.models.split(",") if n.strip())
    if not models or min(models) < 2:
        raise StartError("--models: each N must be at least 2 (one warm model, one idle one to edit)")
    needed = -(-args.warm // wire.MAX_ANNOUNCED_MODELS)  # pods so that none serves more names than a runtime takes
    processes = max(4, needed) if args.warm_processes is None else args.warm_processes
    if args.windows < 1 or args.window <= 0 or processes < 1:
        raise StartError("--windows, --window and --warm-processes must be positive")
    if processes < needed:
        raise StartError(
            f"--warm-processes {processes}: {args.warm} warm models need at least {needed} pods "
            f"(a runtime serves at most {wire.MAX_ANNOUNCED_MODELS} names)"
        )
    return ScaleOptions(
        models=models, warm=args.warm, window_s=args.window, windows=args.windows,
        warm_processes=processes, requests=args.requests, edits=args.edits, scrapes=args.scrapes,
        rounds=max(2, args.rounds),
    )  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    options = options_of(args)
    runs = []
    with scratch_dir(args.out) as work:
        for n in options.models:
            runs.append(await measure(n, options, work, args.redis_url))
    summary = {
        "runs": runs, "warm": options.warm, "window_s": options.window_s, "requests": options.requests,
        "windows": options.windows, "warm_processes": options.warm_processes,
    }  # fmt: skip
    finish(tables(runs, options), summary, args.out)
    return 0
