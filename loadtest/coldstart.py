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
replica is gone (page cache evicted first likewise; the median is reported); ``load_efficiency`` is their ratio.
``--model-size`` cold-starts a random Llama big enough (0.55 GB for ``140m``) that the load measures bandwidth, not
fixed cost. Between repeats the gateway scales the model back to zero (idle timeout 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest import logs, prometheus
from loadtest.children import GatewayProcess, StartError, local_model, running_gateway, scratch_dir, write_config
from loadtest.client import prompt_of, stream_completion
from loadtest.models import SIZES, build_in_child, demo_model
from loadtest.pagecache import evict, raw_read
from loadtest.progress import Progress
from loadtest.report import Table, finish
from loadtest.results import Phase
from loadtest.stats import ratio

__all__ = ["ColdStart", "ColdStartOptions", "add_arguments", "bench", "median_phases", "run"]

_MODEL = "coldstart"
_ENGINE_READY = r"engine ready in ([\d.]+) s: cache ([\d.]+) s, imports ([\d.]+) s, load ([\d.]+) s, warmup ([\d.]+) s"


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

    @property
    def first_token(self) -> float | None:
        return None if self.ttft_s is None else self.sent + self.ttft_s

    def phases(self) -> list[Phase]:
        chain = [
            ("trigger", self.sent, self.scale),
            ("spawn", self.scale, self.spawn),
            ("process start", self.spawn, self.process),
            ("engine start", self.process, self.ready),
            ("ready to dispatch", self.ready, self.dispatch),
            ("first token", self.dispatch, self.first_token),
        ]
        found = []
        for name, start, end in chain:
            if start is not None and end is not None:
                found.append(Phase(name, start - self.sent, end - start))
            if name == "engine start" and self.ready is not None and self.engine:
                found.extend(self._engine_parts(self.ready))
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


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def read_timeline(cold: ColdStart, log_text: str) -> None:
    """Fill in ``cold`` from the gateway log written during it (runtime lines are relayed there)."""
    lines = list(logs.parse(log_text))

    def at(pattern: str, runtime: bool) -> float | None:
        found = logs.find(lines, pattern, runtime)
        return None if found is None else found[0].at

    cold.scale = at(rf"scaling {re.escape(_MODEL)} (from zero|up to)", runtime=False)
    cold.spawn = at(r"starting replica |claimed standby runtime ", runtime=False)
    cold.process = at(r"Started server process", runtime=True)
    cold.ready = at(r"^ready: serving", runtime=True)
    cold.gateway_ready = at(r"is ready at http", runtime=False)
    cold.cache_hit = logs.find(lines, r"weight cache hit", runtime=True) is not None
    if found := logs.find(lines, _ENGINE_READY, runtime=True):
        total, cache, imports, load, warmup = (float(g) for g in found[1].groups())
        cold.engine = {"total": total, "cache": cache, "imports": imports, "load": load, "warmup": warmup}


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


async def _one(
    session: aiohttp.ClientSession, gateway: GatewayProcess, weights: Sequence[Path], options: ColdStartOptions
) -> ColdStart:
    await _scaled_to_zero(session, gateway, timeout_s=120, standby=options.standby)
    if options.evict_page_cache:
        evict(weights)
    offset = gateway.log.size()
    waited_before = await _queue_wait_sum(session, gateway.url)
    body = {"model": _MODEL, "prompt": prompt_of(8), "max_tokens": options.max_tokens, "temperature": 0, "stream": True}
    sent = time.time()
    outcome = await stream_completion(session, gateway.url + "/v1/completions", body, options.timeout_s)
    cold = ColdStart(sent=sent, done=sent + outcome.latency_s, ok=outcome.ok, ttft_s=outcome.ttft_s)
    if outcome.ok:
        cold.dispatch = sent + (await _queue_wait_sum(session, gateway.url)) - waited_before
        await gateway.log.wait_for(logs.REPLICA_READY, offset, timeout_s=10)
    read_timeline(cold, gateway.log.text(offset))
    return cold


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def summarise(
    runs: Sequence[ColdStart], load_bytes: int, raw: tuple[int, float], options: ColdStartOptions
) -> dict[str, Any]:
    def med(values: Sequence[float | None], scale: float = 1.0) -> float | None:
        found = _median(values)
        return None if found is None else found * scale

    load_s = med([r.engine.get("load") for r in runs])
    load_gbps = load_bytes / load_s / 1e9 if load_s else None
    raw_bytes, raw_s = raw
    raw_gbps = raw_bytes / raw_s / 1e9 if raw_s > 0 else None
    return {
        "trigger_ms": med([_between(r.sent, r.scale) for r in runs], 1000),
        "spawn_ms": med([_between(r.scale, r.spawn) for r in runs], 1000),
        "process_start_ms": med([_between(r.spawn, r.process) for r in runs], 1000),
        "cache_s": med([r.engine.get("cache") for r in runs]),
        "imports_s": med([r.engine.get("imports") for r in runs]),
        "load_s": load_s,
        "load_bytes": load_bytes,
        "load_gbps": load_gbps,
        "raw_read_gbps": raw_gbps,
        "load_efficiency": ratio(load_gbps, raw_gbps),
        "warmup_s": med([r.engine.get("warmup") for r in runs]),
        "engine_start_s": med([_between(r.process, r.ready) for r in runs]),
        "ready_to_dispatch_ms": med([_between(r.ready, r.dispatch) for r in runs], 1000),
        "probe_lag_ms": med([_between(r.ready, r.gateway_ready) for r in runs], 1000),
        "first_token_ms": med([_between(r.dispatch, r.first_token) for r in runs], 1000),
        "ttft_s": med([r.ttft_s for r in runs]),
        "total_s": med([r.done - r.sent if r.ok else None for r in runs]),
        "cold_starts": len(runs),
        "errors": sum(not r.ok for r in runs),
        "cache_hits": sum(bool(r.cache_hit) for r in runs),
        "page_cache_evicted": options.evict_page_cache,
        "device": options.device,
        "standby": options.standby,
    }


def tables(runs: Sequence[ColdStart], summary: dict[str, Any]) -> list[Table]:
    timeline = Table(
        f"cold start from zero replicas (median of {len(runs)})" if len(runs) > 1 else "cold start from zero replicas",
        ["phase", "starts at s", "takes s", "share of TTFT"],
    )
    phases = median_phases(runs)
    ttft = summary["ttft_s"]
    for phase in phases:
        share = f"{phase.seconds / ttft:.0%}" if ttft and phase.main else ""
        timeline.add(phase.name, phase.start_s, phase.seconds, share)
    timeline.add("time to first token", None, ttft, "100%" if ttft else "")
    timeline.add("total (last byte)", None, summary["total_s"], "")
    weights = Table("weight load", ["figure", "value"])
    weights.add("bytes", f"{summary['load_bytes']:,}")
    weights.add("load (runtime) GB/s", summary["load_gbps"])
    weights.add("raw read, same files, GB/s", summary["raw_read_gbps"])
    weights.add("load efficiency", summary["load_efficiency"])
    weights.add("page cache evicted", summary["page_cache_evicted"])
    return [timeline, weights]


def median_phases(runs: Sequence[ColdStart]) -> list[Phase]:
    """Each phase's median duration, laid out back to back again: main phases one after the other, the engine's
    parts ending where the engine start ends (as in one run)."""
    by_name: dict[str, list[float]] = {}
    main: dict[str, bool] = {}
    for run in runs:
        for phase in run.phases():
            by_name.setdefault(phase.name, []).append(phase.seconds)
            main[phase.name] = phase.main
    seconds = {name: _median(values) or 0.0 for name, values in by_name.items()}
    parts = [name for name in seconds if not main[name]]
    result, at = [], 0.0
    for name, took in seconds.items():  # timeline order: dicts keep the order in which names were first seen
        if not main[name]:
            continue
        result.append(Phase(name, at, took))
        if name == "engine start":
            part_at = at + took - sum(seconds[p] for p in parts)
            for part in parts:
                result.append(Phase(part, part_at, seconds[part], main=False))
                part_at += seconds[part]
        at += took
    return result


@dataclass(frozen=True)
class _Prepared:
    config: Path
    #: The cached copy's files: what a cold start reads.
    weights: list[Path]
    load_bytes: int


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
        idle_timeout="1s",
        cold_start_timeout=f"{options.timeout_s:g}s",
        min_replicas=0,
    )
    config = write_config(
        work / f"coldstart-standby{options.standby}.toml", [entry], cache_dir, standby=options.standby
    )
    return _Prepared(config, weights, sum(p.stat().st_size for p in weights if p.suffix == ".safetensors"))


async def bench(model: Path, work: Path, options: ColdStartOptions) -> tuple[list[ColdStart], dict[str, Any]]:
    prepared = _prepare(model, work, options)
    weights, config = prepared.weights, prepared.config
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    runs, raw_s = [], []
    async with (
        aiohttp.ClientSession() as session,
        running_gateway(config, config.with_suffix(".log"), scale_interval_s=0.2) as gateway,
    ):
        with Progress("cold starts", total=options.repeat) as progress:
            for _ in range(options.repeat):
                runs.append(await _one(session, gateway, weights, options))
                await _scaled_to_zero(session, gateway, 120, options.standby)  # the replica gone, as for the next load
                raw_s.append(_raw_read(safetensors, options))
                progress.advance()
    raw = (sum(p.stat().st_size for p in safetensors), _median(raw_s) or 0.0)
    return runs, summarise(runs, prepared.load_bytes, raw, options)


def _raw_read(safetensors: Sequence[Path], options: ColdStartOptions) -> float:
    """Seconds a plain read of the weight files takes, between two cold starts (page cache evicted likewise), so
    that the load and the disk it is compared with are measured under the same conditions on the machine."""
    if options.evict_page_cache:
        evict(safetensors)
    return raw_read(safetensors)[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    which.add_argument(
        "--model-size",
        choices=sorted(SIZES),
        help="a random Llama of this size (loadtest.models, float32, built on the CPU once per scratch directory): "
        "140m is 0.55 GB, enough that the load measures bandwidth rather than fixed cost",
    )
    parser.add_argument("--repeat", type=int, default=1, help="cold starts to measure (median reported). Default 1")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
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
        "claimed by each cold start), both (default: off, then on, side by side with their ratio)",
    )
    parser.add_argument("--out", type=Path, help="write coldstart.png, the gateway log and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = ColdStartOptions(args.repeat, args.device, args.dtype, args.evict_page_cache)
    modes = {"off": [0], "on": [1], "both": [0, 1]}[args.standby]
    results = []
    with scratch_dir(args.out) as work:
        model = await _model(args, work)
        for standby in modes:
            results.append(await bench(model, work, dataclasses.replace(options, standby=standby)))
    runs, summary = results[-1]
    if args.out is not None:
        from loadtest.plots import plot_coldstart

        plot_coldstart(median_phases(runs), args.out / "coldstart.png")
    if len(results) == 1:
        finish(tables(runs, summary), summary, args.out)
        return 0
    (cold_runs, cold), (warm_runs, warm) = results
    both = {"without_standby": cold, "with_standby": warm, "ttft_ratio": ratio(warm["ttft_s"], cold["ttft_s"])}
    shown = [*_titled(tables(cold_runs, cold), "without standby"), *_titled(tables(warm_runs, warm), "with standby")]
    finish([*shown, standby_table(cold, warm)], both, args.out)
    return 0


def _titled(found: list[Table], suffix: str) -> list[Table]:
    for table in found:
        table.title = f"{table.title}, {suffix}"
    return found


def standby_table(cold: dict[str, Any], warm: dict[str, Any]) -> Table:
    """The two cold starts side by side: the figures a standby runtime changes, and their ratio."""
    table = Table("standby runtime: off vs on (medians, same run)", ["figure", "off", "on", "on / off"])
    for key in ("ttft_s", "engine_start_s", "imports_s", "load_s", "warmup_s", "ready_to_dispatch_ms"):
        table.add(key, cold[key], warm[key], ratio(warm[key], cold[key]))
    return table


async def _model(args: argparse.Namespace, work: Path) -> Path:
    """``--model``, or a random Llama of ``--model-size`` (built unless ``work`` holds one), or the demo model."""
    if args.model_size is None:
        return await demo_model(args.model, work)
    model = work / f"llama-{args.model_size}"
    if not (model / "build.json").is_file():  # written last: a model without it is a build that did not finish
        print(f"bench coldstart: building a random {args.model_size} Llama on the CPU", file=sys.stderr)
        await build_in_child(args.model_size, model, "cpu")
    return model
