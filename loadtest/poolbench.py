"""``python -m loadtest bench pool``: time to first token for a model that is parked or absent in a pool runtime,
against a fresh cold start of its own replica from zero without a standby (what a Deployment at zero pays today).

Two kinds of process serve the same model (``target``: the demo model, ``--model`` or a random ``--model-size``):

- one pool runtime (``python -m runtime --pool``) with ``target`` and two fillers (the same weights under other
  names, each copied into the pool's node-local cache as a model of its own), under a device budget and a host
  budget that hold one model each (1.5x its checkpoint's bytes). It is driven over its HTTP API: ``POST /v1/batch``
  (wire format) and ``GET /readyz`` for each model's state.

  - **parked**: ``target`` is asked for, then a filler: ``target`` leaves the device for host memory. Measured: one
    streamed request for ``target`` (the wake, then prefill and the first decoding step).
  - **absent**: ``target``, then both fillers: the later filler's arrival sends the parked ``target`` to disk (the
    host holds one model: the more recently used filler). The cached files are dropped from the page cache. Measured:
    one streamed request for ``target`` (a load from disk, without warm-up, then prefill and the first step).

  The state ``/readyz`` reports just before each measured request, and after it (``active``, with one more wake or
  load), is kept per run; a run whose model was not in the state its side names is an error.
- **cold**: a fresh ``python -m runtime`` process for ``target`` alone (its own node-local cache, page cache
  evicted, no standby), timed from just before the process is spawned to the first streamed token: interpreter,
  imports, weight load, warm-up, the first ``/readyz`` 200 (probed every 20 ms), then the same request. Excluded:
  everything a gateway and Kubernetes add before the process (scheduling, image pull, the gateway's trigger and
  probe; ``bench coldstart`` measures the gateway's part), so the cold side is a lower bound.

The three sides alternate, each repetition in another order (parked, absent, cold; absent, cold, parked; ...), after
one unmeasured round of each (``--no-warmup`` skips it). Page-cache eviction (``posix_fadvise(DONTNEED)``) is checked
with ``mincore`` before every absent load and cold start (``page_cache_eviction_verified``). The issue's targets
(parked TTFT <= 0.2 s and <= 1/10 of the cold start's) are printed as PASS/MISS; nothing fails on a MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.processes import free_port, probe_until_ready
from loadtest.children import Child, LogFile, RuntimeProcess, StartError, child_env, running_runtime, scratch_dir
from loadtest.client import prompt_of
from loadtest.models import SIZES, demo_model, sized_model
from loadtest.pagecache import evict, resident_bytes
from loadtest.poolbench_report import SIDES, summarise, tables
from loadtest.progress import Progress
from loadtest.report import finish
from wire import BATCH_PATH, READY_PATH, PoolModel, ReadyBody

__all__ = ["PoolOptions", "PoolRun", "add_arguments", "measure", "run", "state_error"]

TARGET = "target"
FILLERS = ("filler-a", "filler-b")
#: Each budget holds one model: 1.5x its checkpoint's bytes (a second model does not fit).
_BUDGET_FACTOR = 1.5
#: How often the cold runtime's ``/readyz`` is probed: at most this much is added to a cold start.
_PROBE_S = 0.02
_MOVE = re.compile(rf"pool: (?:woke|loaded) {TARGET}: [\d.]+ MB in ([\d.]+) s")
_ENGINE_READY = re.compile(
    r"engine ready in ([\d.]+) s: cache ([\d.]+) s, imports ([\d.]+) s, load ([\d.]+) s, warmup ([\d.]+) s"
)


@dataclass(frozen=True, kw_only=True)
class PoolOptions:
    repeat: int = 1
    max_tokens: int = 8
    evict_page_cache: bool = True
    warmup: bool = True
    timeout_s: float = 300.0


@dataclass
class PoolRun:
    """One measured request for ``target``; times in seconds."""

    side: str
    _: KW_ONLY
    repetition: int = 0
    #: Its place among all measured requests, from 0.
    order: int = 0
    ttft_s: float | None = None
    error: str | None = None
    #: ``target``'s state (``/readyz``) just before the request and once it was answered (pool sides).
    state_before: str | None = None
    state_after: str | None = None
    #: How many more times ``target`` was loaded and woken during the request (pool sides).
    loads: int | None = None
    wakes: int | None = None
    #: Bytes of the weight files in the page cache just before the load (absent and cold sides).
    resident_before_load: int | None = None
    #: The wake's or load's own seconds, from the pool runtime's ``pool: woke/loaded`` line.
    move_s: float | None = None
    #: Cold side: spawn to the first ``/readyz`` 200, and the runtime's own ``engine ready in`` breakdown.
    ready_s: float | None = None
    engine: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None


@dataclass(frozen=True, kw_only=True)
class _Setup:
    source: Path
    work: Path
    pool_cache: Path
    cold_cache: Path
    #: The files each side's load reads: ``target``'s copy in the pool's cache, and in the cold replica's.
    pool_files: list[Path]
    cold_files: list[Path]
    weight_bytes: int

    @property
    def budget_bytes(self) -> int:
        return int(self.weight_bytes * _BUDGET_FACTOR)


def _prepare(model: Path, work: Path) -> _Setup:
    """``target`` and its fillers in the pool's cache, ``target`` in the cold replica's: every load is a cache hit."""
    from runtime.weights.cache import materialise

    source = model.resolve()
    pool_cache, cold_cache = work / "pool-cache", work / "cold-cache"
    for filler in _filler_sources(source, work):
        materialise(str(filler), pool_cache)
    pool_dir = materialise(str(source), pool_cache).path
    cold_dir = materialise(str(source), cold_cache).path
    weight_bytes = sum(p.stat().st_size for p in pool_dir.glob("*.safetensors"))
    return _Setup(
        source=source,
        work=work,
        pool_cache=pool_cache,
        cold_cache=cold_cache,
        pool_files=_files(pool_dir),
        cold_files=_files(cold_dir),
        weight_bytes=weight_bytes,
    )


def _filler_sources(source: Path, work: Path) -> list[Path]:
    """The fillers' sources: links to ``target``'s directory under other names, so the cache holds a copy each."""
    links = []
    for name in FILLERS:
        link = work / "pool-models" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
        links.append(link)
    return links


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def _pool_flags(setup: _Setup) -> list[str]:
    models = [("--model", f"{TARGET}={setup.source}")]
    models += [("--model", f"{name}={setup.work / 'pool-models' / name}") for name in FILLERS]
    budgets = ["--pool-device-bytes", str(setup.budget_bytes), "--pool-host-bytes", str(setup.budget_bytes)]
    return ["--pool", *(word for pair in models for word in pair), *budgets, *_common(setup.pool_cache)]


def _common(cache: Path) -> list[str]:
    return ["--cache-dir", str(cache), "--device", "cpu"]


# --- one request, streamed ------------------------------------------------------------------------------------------


def _batch(model: str, max_tokens: int) -> dict[str, Any]:
    params = {"max_tokens": max_tokens, "temperature": 0}
    return {"model": model, "requests": [{"id": "r", "prompt": prompt_of(8), "params": params, "stream": True}]}


async def streamed(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float) -> float | None:
    """``POST /v1/batch`` of one streamed request, read to its finish: when (``time.perf_counter``) its first text
    came, None if no text did. Raises ``RequestFailed`` if it was not answered in full."""
    first: float | None = None
    finished = False
    try:
        async with session.post(url + BATCH_PATH, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as answer:
            if answer.status != 200:
                raise RequestFailed(f"{answer.status}: {(await answer.text())[:200]}")
            async for raw in answer.content:
                event: dict[str, Any] = json.loads(raw) if raw.strip() else {}
                if first is None and event.get("type") == "token" and event.get("text"):
                    first = time.perf_counter()
                if event.get("type") == "error":
                    raise RequestFailed(f"error event: {event.get('code')}: {event.get('message')}")
                finished = finished or event.get("type") == "finish"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
    if not finished:
        raise RequestFailed("the stream ended without a finish event")
    return first


async def first_token(session: aiohttp.ClientSession, url: str, max_tokens: int, timeout_s: float) -> float:
    """A measured request for ``target``: when its first text came (``RequestFailed`` if none did)."""
    first = await streamed(session, url, _batch(TARGET, max_tokens), timeout_s)
    if first is None:
        raise RequestFailed("no text was streamed")
    return first


class RequestFailed(Exception):
    """A measured or preparing request was not answered in full; the message says how it failed."""


# --- the pool's sides ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    session: aiohttp.ClientSession
    runtime: RuntimeProcess
    setup: _Setup
    options: PoolOptions

    async def ask(self, model: str) -> None:
        await streamed(self.session, self.runtime.url, _batch(model, 1), self.options.timeout_s)

    async def target(self) -> PoolModel:
        async with self.session.get(self.runtime.url + READY_PATH) as answer:
            body = ReadyBody.model_validate_json(await answer.read())
        if body.pool is None:
            raise StartError(f"{self.runtime.url} is not a pool runtime: no pool in its /readyz")
        return body.pool.models[TARGET]


async def _pool_side(pool: _Pool, side: str) -> PoolRun:
    """``target`` made parked or absent (as ``side`` says), then one streamed request for it."""
    run = PoolRun(side)
    try:
        for model in (TARGET, *FILLERS[: 1 if side == "parked" else 2]):
            await pool.ask(model)
    except RequestFailed as exc:
        run.error = f"preparing: {exc}"
        return run
    before = await pool.target()
    if side == "absent":
        run.resident_before_load = _evicted(pool.setup.pool_files, pool.options)
    offset = pool.runtime.child.log.size()
    sent = time.perf_counter()
    try:
        run.ttft_s = await first_token(pool.session, pool.runtime.url, pool.options.max_tokens,
                                       pool.options.timeout_s) - sent  # fmt: skip
    except RequestFailed as exc:
        run.error = str(exc)
    after = await pool.target()
    run.state_before, run.state_after = before.state, after.state
    run.loads, run.wakes = after.loads - before.loads, after.wakes - before.wakes
    run.move_s = _move_seconds(pool.runtime.child.log, offset)
    run.error = run.error or state_error(side, before.state, after.state)
    return run


def state_error(side: str, before: str, after: str) -> str | None:
    """Why a run does not measure its side: the model was not parked (absent) before the request, or not active
    after it; None if it does."""
    if before == side and after == "active":
        return None
    return f"{TARGET} was {before} before the request and {after} after, not {side} then active"


def _evicted(files: Sequence[Path], options: PoolOptions) -> int:
    """The files dropped from the page cache (if asked); the bytes of them still there (``mincore``)."""
    if options.evict_page_cache:
        evict(files)
    return resident_bytes(files)


def _move_seconds(log: LogFile, offset: int) -> float | None:
    found = _MOVE.search(log.text(offset))
    return float(found.group(1)) if found else None


# --- the cold side ------------------------------------------------------------------------------------------------


async def _cold_side(session: aiohttp.ClientSession, setup: _Setup, options: PoolOptions, log: Path) -> PoolRun:
    """A fresh runtime process for ``target``, from spawn to its first streamed token."""
    run = PoolRun("cold", resident_before_load=_evicted(setup.cold_files, options))
    async with _spawned(setup, log) as (child, url, spawned):
        try:
            ready = await probe_until_ready(
                url + READY_PATH, exited=lambda: child.returncode is not None, period_s=_PROBE_S,
                timeout_s=options.timeout_s,
            )  # fmt: skip
        except TimeoutError:
            ready = False
        if not ready:
            run.error = f"the cold runtime was not ready (exit {child.returncode}):\n{child.log.tail(8)}"
            return run
        run.ready_s = time.perf_counter() - spawned
        try:
            answered = await first_token(session, url, options.max_tokens, options.timeout_s)
            run.ttft_s = answered - spawned
        except RequestFailed as exc:
            run.error = str(exc)
    if found := _ENGINE_READY.search(LogFile(log).text()):
        run.engine = dict(zip(("total", "cache", "imports", "load", "warmup"), map(float, found.groups()), strict=True))
    return run


@contextlib.asynccontextmanager
async def _spawned(setup: _Setup, log: Path) -> AsyncIterator[tuple[Child, str, float]]:
    """``python -m runtime`` for ``target`` on a free port: the child, its URL, and when it was spawned."""
    port = free_port()
    argv = [sys.executable, "-m", "runtime", "--model-name", TARGET, "--source", str(setup.source),
            *_common(setup.cold_cache), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    spawned = time.perf_counter()
    child = Child("cold runtime", argv, child_env({}), log)
    try:
        yield child, f"http://127.0.0.1:{port}", spawned
    finally:
        child.stop()


# --- the whole run ------------------------------------------------------------------------------------------------


def _turns(repetition: int) -> list[str]:
    """The sides in this repetition's order: each repetition starts one side later."""
    shift = repetition % len(SIDES)
    return [*SIDES[shift:], *SIDES[:shift]]


async def measure(session: aiohttp.ClientSession, runtime: RuntimeProcess, setup: _Setup, options: PoolOptions,
                  ) -> list[PoolRun]:  # fmt: skip
    pool = _Pool(session, runtime, setup, options)

    async def one(side: str, name: str) -> PoolRun:
        if side == "cold":
            return await _cold_side(session, setup, options, setup.work / f"cold-runtime-{name}.log")
        return await _pool_side(pool, side)

    if options.warmup:
        for side in SIDES:
            await one(side, "warmup")
    runs: list[PoolRun] = []
    with Progress("pool", total=options.repeat * len(SIDES)) as progress:
        for repetition in range(options.repeat):
            for side in _turns(repetition):
                measured = await one(side, str(len(runs)))
                measured.repetition, measured.order = repetition, len(runs)
                runs.append(measured)
                progress.advance()
    return runs


async def bench(model: Path, work: Path, options: PoolOptions, label: str) -> dict[str, Any]:
    """The three sides measured in one run; the summary (``label`` names the model in it)."""
    setup = _prepare(model, work)
    pool_log = work / "pool-runtime.log"
    spawned = time.perf_counter()
    # A connection per request: a kept-alive one idle through a cold start outlives uvicorn's 5 s keep-alive and is
    # closed under the next request (ServerDisconnectedError); a cold start's first request needs a new one anyway.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        running_runtime(_pool_flags(setup), pool_log, timeout_s=options.timeout_s) as runtime,
    ):
        pool_start_s = time.perf_counter() - spawned
        runs = await measure(session, runtime, setup, options)
    return summarise(runs, options, model=label, weight_bytes=setup.weight_bytes, budget_bytes=setup.budget_bytes,
                     pool_start_s=pool_start_s)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    which.add_argument(
        "--model-size",
        choices=sorted(SIZES),
        help="a random Llama of this size (loadtest.models, float32, built on the CPU once per scratch directory): "
        "140m is 0.55 GB",
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of the three sides (medians). Default 1")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per measured request. Default 8")
    parser.add_argument(
        "--no-evict-page-cache",
        dest="evict_page_cache",
        action="store_false",
        help="leave the weight files in the page cache before the absent loads and cold starts",
    )
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the unmeasured first round of each side"
    )
    parser.add_argument("--out", type=Path, help="write the runtimes' logs and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = PoolOptions(
        repeat=max(1, args.repeat),
        max_tokens=max(1, args.max_tokens),
        evict_page_cache=args.evict_page_cache,
        warmup=args.warmup,
    )
    with scratch_dir(args.out) as work:
        if args.model_size is None:
            model = await demo_model(args.model, work)
        else:
            model = await sized_model(args.model_size, work, "bench pool")
        label = args.model_size or ("demo" if args.model is None else str(args.model))
        summary = await bench(model, work, options, label)
    finish(tables(summary), summary, args.out)
    return 0
