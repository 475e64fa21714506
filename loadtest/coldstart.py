"""``python -m loadtest bench coldstart``: one request to a model with zero replicas, phase by phase.

A local gateway serves the model with ``min-replicas = 0``; the model is put into the node-local weight cache
first, so every cold start measured is a cache hit, as on a node that served the model before. With
``--evict-page-cache`` (the default) the cached weight files are dropped from the OS page cache before each cold
start (``posix_fadvise(DONTNEED)``, no root needed), so the load reads from disk. One cold start's timeline, from
the client's send (all clocks are this machine's wall clock):

1. trigger: sent -> the gateway asks for a replica ("scaling ... from zero" in its log);
2. spawn: -> the replica process is started ("starting replica");
3. process start: -> the runtime's server runs (its first log line: interpreter, imports, uvicorn);
4. engine start: -> the runtime reports ready ("ready: serving"), made of cache lookup, imports (torch),
   weight load and warm-up, as its "engine ready in ..." line breaks it down;
5. ready to dispatch: -> the gateway hands the request to the replica (arrival + the gateway's own
   ``kaltstart_queue_wait_seconds``); includes the gateway's readiness probe period (0.1 s);
6. first token: -> the first streamed token reaches the client.

Next to the weight load's bytes/s, the raw read speed of the same files is measured after each cold start, once the
replica is gone (page cache evicted first likewise), on one thread and on as many threads as the runtime's weight
reader uses (``--weight-read-threads``, passed to the replicas); ``load_efficiency`` is the load against the
one-thread read, ``load_efficiency_n`` against the N-thread one. Whether the eviction worked is checked with
``mincore`` before each load and each raw read (``resident_bytes_before_load``).
``--model-size`` cold-starts a random Llama big enough (0.55 GB for ``140m``) that the load measures bandwidth, not
fixed cost. Between repeats the gateway scales the model back to zero (idle timeout 1 s). With ``--standby both``
two gateways run side by side, one without and one with a standby runtime, and their cold starts alternate (with,
without, with, without, ...), each started only once both gateways are at rest. The report shows each run's phases
(they add up to its TTFT) and the median run's timeline (``loadtest.coldstart_report``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest import logs, prometheus
from loadtest.children import GatewayProcess, StartError, local_model, running_gateway, scratch_dir, write_config
from loadtest.client import prompt_of, stream_completion
from loadtest.coldstart_report import median_run_phases, standby_table, summarise, tables
from loadtest.models import SIZES, demo_model, sized_model
from loadtest.pagecache import evict, raw_read, resident_bytes
from loadtest.progress import Progress
from loadtest.readers import DEFAULT_THREADS
from loadtest.report import Table, finish
from loadtest.results import Phase
from loadtest.stats import ratio

__all__ = [
    "ColdStart",
    "ColdStartOptions",
    "add_arguments",
    "bench",
    "bench_sides",
    "median_run_phases",
    "run",
    "standby_startups",
]

_MODEL = "coldstart"
_ENGINE_READY = r"engine ready in ([\d.]+) s: cache ([\d.]+) s, imports ([\d.]+) s, load ([\d.]+) s, warmup ([\d.]+) s"
#: The gateway's line when it starts a standby runtime; group 1 is the standby's name.
_STANDBY_STARTING = re.compile(r"^starting standby (\S+):")
#: The main phases, each ending at one mark of ``ColdStart.marks`` (in this order).
PHASES = ("trigger", "spawn", "process start", "engine start", "ready to dispatch", "first token")


@dataclass(frozen=True)
class ColdStartOptions:
    repeat: int = 1
    device: str = "auto"
    dtype: str = "auto"
    evict_page_cache: bool = True
    max_tokens: int = 8
    timeout_s: float = 900.0
    #: Standby runtimes the local backend keeps (0: every cold start starts a process).
    standby: int = 0
    #: The replicas' ``--weight-read-threads``, and the threads of the N-thread raw read it is compared with.
    read_threads: int = DEFAULT_THREADS


@dataclass
class ColdStart:
    """One cold start's timestamps (Unix time) and the runtime's own phase durations; None where not found."""

    sent: float
    done: float
    ok: bool
    ttft_s: float | None = None
    scale: float | None = None
    spawn: float | None = None
    process: float | None = None
    ready: float | None = None
    gateway_ready: float | None = None
    dispatch: float | None = None
    engine: dict[str, float] = field(default_factory=dict)
    cache_hit: bool | None = None
    #: Its place in the whole sequence of cold starts (both gateways', when they alternate), from 0.
    order: int = 0
    #: Bytes of the weight files in the page cache just before the request was sent (``mincore``).
    resident_before_load: int | None = None
    #: The same, before the raw reads after this cold start (the larger of the two reads' figures).
    resident_before_raw_read: int | None = None
    #: Seconds of the raw reads after this cold start: one thread, and ``read_threads`` threads.
    raw_1_s: float | None = None
    raw_n_s: float | None = None
    #: When the gateway started the standby that replaces the one this cold start claimed.
    replacement_started: float | None = None

    @property
    def first_token(self) -> float | None:
        return None if self.ttft_s is None else self.sent + self.ttft_s

    def marks(self) -> list[float | None]:
        """Where each of ``PHASES`` ends."""
        return [self.scale, self.spawn, self.process, self.ready, self.dispatch, self.first_token]

    def phase_seconds(self) -> dict[str, float | None]:
        """Each main phase's seconds, from the previous mark found to its own: a phase whose mark is missing is
        None and its time goes to the next phase found, so the phases found add up to the TTFT exactly."""
        seconds: dict[str, float | None] = {}
        at = self.sent
        for name, mark in zip(PHASES, self.marks(), strict=True):
            seconds[name] = None if mark is None else mark - at
            at = at if mark is None else mark
        return seconds

    def phases(self) -> list[Phase]:
        """The main phases found, back to back from the send, the engine's own parts after the engine start."""
        found, at = [], 0.0
        for name, took in self.phase_seconds().items():
            if took is None:
                continue
            found.append(Phase(name, at, took))
            if name == "engine start" and self.ready is not None and self.engine:
                found.extend(self._engine_parts(self.ready))
            at += took
        return found

    def _engine_parts(self, ready: float) -> list[Phase]:
        """The runtime's own breakdown, laid out back to back so that the last part ends when it is ready."""
        parts = ("cache", "imports", "load", "warmup")
        at = ready - sum(self.engine[k] for k in parts)
        found = []
        for name in parts:
            found.append(Phase(f"  {name}", at - self.sent, self.engine[name], main=False))
            at += self.engine[name]
        return found

    @property
    def replacement_started_s(self) -> float | None:
        """Seconds after the send that the replacement standby was started."""
        return None if self.replacement_started is None else self.replacement_started - self.sent

    @property
    def replacement_overlap_s(self) -> float | None:
        """Seconds the replacement standby was starting before the first token reached the client (0: after)."""
        if self.replacement_started is None or self.first_token is None:
            return None
        return max(0.0, self.first_token - self.replacement_started)


def read_timeline(cold: ColdStart, log_text: str) -> None:
    """Fill in ``cold`` from the gateway log written during it (runtime lines are relayed there). A standby started
    meanwhile (the replacement for a claimed one) logs the same uvicorn lines under its own name: its lines do not
    count."""
    parsed = list(logs.parse(log_text))
    started = {m.group(1) for line in parsed if line.replica is None and (m := _STANDBY_STARTING.match(line.message))}
    lines = [line for line in parsed if line.replica not in started]

    def at(pattern: str, runtime: bool) -> float | None:
        found = logs.find(lines, pattern, runtime)
        return None if found is None else found[0].at

    cold.scale = at(rf"scaling {re.escape(_MODEL)} (from zero|up to)", runtime=False)
    cold.spawn = at(r"starting replica |claimed standby runtime ", runtime=False)
    cold.process = at(r"Started server process", runtime=True)
    cold.ready = at(r"^ready: serving", runtime=True)
    cold.gateway_ready = at(r"is ready at http", runtime=False)
    cold.replacement_started = at(_STANDBY_STARTING.pattern, runtime=False)
    cold.cache_hit = logs.find(lines, r"weight cache hit", runtime=True) is not None
    if found := logs.find(lines, _ENGINE_READY, runtime=True):
        total, cache, imports, load, warmup = (float(g) for g in found[1].groups())
        cold.engine = {"total": total, "cache": cache, "imports": imports, "load": load, "warmup": warmup}


def standby_startups(log_text: str) -> list[float]:
    """Seconds from the gateway starting each standby runtime to its ``standby: engine imported`` line: the
    standby's own start-up (process, interpreter, imports), for every standby that got that far."""
    started: dict[str, float] = {}
    took = []
    for line in logs.parse(log_text):
        if line.replica is None and (match := _STANDBY_STARTING.match(line.message)):
            started[match.group(1)] = line.at
        elif line.replica in started and line.message.startswith("standby: engine imported"):
            took.append(line.at - started.pop(line.replica))
    return took


async def _scrape(session: aiohttp.ClientSession, url: str) -> prometheus.Scrape:
    async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as response:
        return prometheus.parse(await response.text())


async def _queue_wait_sum(session: aiohttp.ClientSession, url: str) -> float:
    return (await _scrape(session, url)).value("kaltstart_queue_wait_seconds_sum", model=_MODEL) or 0.0


def _runtimes_alive(log_text: str) -> int:
    """Runtime processes started minus those finished, by their relayed uvicorn lines (standbys included)."""
    relayed = [line.message for line in logs.parse(log_text) if line.replica is not None]
    started = sum(m.startswith("Started server process") for m in relayed)
    return started - sum(m.startswith("Finished server process") for m in relayed)


def _standbys_waiting(log_text: str) -> int:
    """Standby runtimes that have imported their engine and wait for a claim, by the relayed log."""
    relayed = [line.message for line in logs.parse(log_text) if line.replica is not None]
    imported = sum(m.startswith("standby: engine imported") for m in relayed)
    return imported - sum(m.startswith("claimed: serving") for m in relayed)


async def _scaled_to_zero(
    session: aiohttp.ClientSession, gateway: GatewayProcess, timeout_s: float, standby: int = 0
) -> None:
    """Until the model has no replica wanted, the last one's process has finished (no CPU left to it) and, with
    ``standby``, that many standby runtimes have imported their engine and wait (the steady state between two
    sporadic requests)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        scrape = await _scrape(session, gateway.url)
        desired = scrape.value("kaltstart_replicas", model=_MODEL, state="desired")
        text = gateway.log.text()
        if desired == 0 and _runtimes_alive(text) <= standby and _standbys_waiting(text) >= standby:
            return
        await asyncio.sleep(0.1)  # another process's state: polled with a deadline
    raise StartError(f"the model was not scaled back to zero within {timeout_s:.0f} s:\n{gateway.log.tail()}")


async def _at_rest(session: aiohttp.ClientSession, gateways: dict[int, GatewayProcess]) -> None:
    """Every gateway scaled to zero with its standbys imported: nothing of one run competes with the next."""
    for standby, gateway in gateways.items():
        await _scaled_to_zero(session, gateway, timeout_s=120, standby=standby)


async def _one(
    session: aiohttp.ClientSession, gateway: GatewayProcess, weights: Sequence[Path], options: ColdStartOptions
) -> tuple[ColdStart, int]:
    """One cold start, and the gateway log's size when it began (its timeline is read once the gateway is at rest
    again, when the replacement standby's start is logged too)."""
    if options.evict_page_cache:
        evict(weights)
    offset = gateway.log.size()
    waited_before = await _queue_wait_sum(session, gateway.url)
    resident = resident_bytes(weights)
    body = {"model": _MODEL, "prompt": prompt_of(8), "max_tokens": options.max_tokens, "temperature": 0, "stream": True}
    sent = time.time()
    outcome = await stream_completion(session, gateway.url + "/v1/completions", body, options.timeout_s)
    cold = ColdStart(sent=sent, done=sent + outcome.latency_s, ok=outcome.ok, ttft_s=outcome.ttft_s)
    cold.resident_before_load = resident
    if outcome.ok:
        cold.dispatch = sent + (await _queue_wait_sum(session, gateway.url)) - waited_before
        await gateway.log.wait_for(logs.REPLICA_READY, offset, timeout_s=10)
    return cold, offset


@dataclass(frozen=True)
class _Prepared:
    config: Path
    #: The cached copy's files: what a cold start reads.
    weights: list[Path]
    load_bytes: int

    @property
    def safetensors(self) -> list[Path]:
        return [p for p in self.weights if p.suffix == ".safetensors"]


def _prepare(model: Path, work: Path, options: ColdStartOptions) -> _Prepared:
    """Fill the node cache now (so every measured cold start hits it) and write the gateway's config."""
    from runtime.weights.cache import materialise

    source = str(model.resolve())
    cache_dir = work / "cache"
    cached = materialise(source, cache_dir).path
    weights = sorted(p for p in cached.iterdir() if p.is_file() and not p.name.startswith("."))
    entry = local_model(
        _MODEL,
        source=source,
        device=options.device,
        dtype=options.dtype,
        args=("--weight-read-threads", str(options.read_threads)),
        idle_timeout="1s",
        cold_start_timeout=f"{options.timeout_s:g}s",
        min_replicas=0,
    )
    config = write_config(
        work / f"coldstart-standby{options.standby}.toml", [entry], cache_dir, standby=options.standby
    )
    return _Prepared(config, weights, sum(p.stat().st_size for p in weights if p.suffix == ".safetensors"))


Side = tuple[list[ColdStart], dict[str, Any]]


async def bench(model: Path, work: Path, options: ColdStartOptions) -> Side:
    """The cold starts of one gateway, with ``options.standby`` standby runtimes."""
    (side,) = await bench_sides(model, work, options, [options.standby])
    return side


async def bench_sides(model: Path, work: Path, options: ColdStartOptions, standbys: Sequence[int]) -> list[Side]:
    """One gateway per entry of ``standbys`` (its standby count), all running at once; their cold starts alternate
    in that order, ``options.repeat`` rounds, each started once every gateway is at rest. One result per gateway."""
    prepared = {s: _prepare(model, work, dataclasses.replace(options, standby=s)) for s in standbys}
    runs: dict[int, list[ColdStart]] = {s: [] for s in standbys}
    texts: dict[int, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        gateways = {
            s: await stack.enter_async_context(
                running_gateway(p.config, p.config.with_suffix(".log"), scale_interval_s=0.2)
            )
            for s, p in prepared.items()
        }
        with Progress("cold starts", total=options.repeat * len(standbys)) as progress:
            for order in range(options.repeat * len(standbys)):
                standby = standbys[order % len(standbys)]
                await _at_rest(session, gateways)
                cold, offset = await _one(session, gateways[standby], prepared[standby].weights, options)
                await _at_rest(session, gateways)  # the replica gone, as for the next load
                read_timeline(cold, gateways[standby].log.text(offset))
                cold.order = order
                _raw_reads(cold, prepared[standby].safetensors, options)
                runs[standby].append(cold)
                progress.advance()
        texts = {s: gateway.log.text() for s, gateway in gateways.items()}
    return [
        (
            runs[s],
            summarise(
                runs[s],
                load_bytes=prepared[s].load_bytes,
                raw_bytes=sum(p.stat().st_size for p in prepared[s].safetensors),
                options=dataclasses.replace(options, standby=s),
                startups=standby_startups(texts[s]),
            ),
        )
        for s in standbys
    ]


def _raw_reads(cold: ColdStart, safetensors: Sequence[Path], options: ColdStartOptions) -> None:
    """A plain read of the weight files on one thread, then on ``read_threads``, between two cold starts (page cache
    evicted likewise before each), so that the load and the disk it is compared with are measured under the same
    conditions on the machine."""
    resident = []
    for threads in sorted({1, options.read_threads}):
        if options.evict_page_cache:
            evict(safetensors)
        resident.append(resident_bytes(safetensors))
        seconds = raw_read(safetensors, threads)[1]
        if threads == 1:
            cold.raw_1_s = seconds
        else:
            cold.raw_n_s = seconds
    if options.read_threads == 1:
        cold.raw_n_s = cold.raw_1_s  # the same read
    cold.resident_before_raw_read = max(resident)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    which.add_argument(
        "--model-size",
        choices=sorted(SIZES),
        help="a random Llama of this size (loadtest.models, float32, built on the CPU once per scratch directory): "
        "140m is 0.55 GB, enough that the load measures bandwidth rather than fixed cost",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="cold starts to measure per side (median reported). Default 1"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument(
        "--read-threads",
        type=int,
        default=DEFAULT_THREADS,
        help="the replicas' --weight-read-threads, and the threads of the raw read the load is also compared with "
        f"(load_efficiency_n). Default {DEFAULT_THREADS}, the runtime's default",
    )
    parser.add_argument(
        "--no-evict-page-cache",
        dest="evict_page_cache",
        action="store_false",
        help="leave the weight files in the page cache (measures a warm-page-cache start)",
    )
    parser.add_argument(
        "--standby",
        choices=("off", "on", "both"),
        default="both",
        help="the local backend's standby runtime: off (every cold start starts a process), on (one standby, "
        "claimed by each cold start), both (default: two gateways, their cold starts alternating with, without, "
        "with, ..., side by side with their ratio)",
    )
    parser.add_argument("--out", type=Path, help="write coldstart.png, the gateway logs and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = ColdStartOptions(
        args.repeat, args.device, args.dtype, args.evict_page_cache, read_threads=max(1, args.read_threads)
    )
    modes = {"off": [0], "on": [1], "both": [1, 0]}[args.standby]  # with first: with, without, with, ...
    with scratch_dir(args.out) as work:
        model = await _model(args, work)
        results = await bench_sides(model, work, options, modes)
    runs, summary = results[0]  # with --standby both, the plot shows the run with a standby, as it did
    if args.out is not None:
        from loadtest.plots import plot_coldstart

        plot_coldstart(median_run_phases(runs), args.out / "coldstart.png")
    if len(results) == 1:
        finish(tables(runs, summary), summary, args.out)
        return 0
    (warm_runs, warm), (cold_runs, cold) = results
    both = {
        "without_standby": cold,
        "with_standby": warm,
        "ttft_ratio": ratio(warm["ttft_s"], cold["ttft_s"]),
        "interleaved": True,
    }
    shown = [*_titled(tables(cold_runs, cold), "without standby"), *_titled(tables(warm_runs, warm), "with standby")]
    finish([*shown, standby_table(cold, warm)], both, args.out)
    return 0


def _titled(found: list[Table], suffix: str) -> list[Table]:
    for table in found:
        table.title = f"{table.title}, {suffix}"
    return found


async def _model(args: argparse.Namespace, work: Path) -> Path:
    """``--model``, or a random Llama of ``--model-size`` (built unless ``work`` holds one), or the demo model."""
    if args.model_size is None:
        return await demo_model(args.model, work)
    return await sized_model(args.model_size, work, "bench coldstart")
