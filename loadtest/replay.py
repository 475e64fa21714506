"""``python -m loadtest replay``: replay a request trace against a gateway, open loop, and report what clients saw.

Each request is sent at its (compressed) trace time whether or not earlier ones have finished, streamed, and
recorded with its status, time to first token and total latency. Meanwhile the gateway's ``/metrics`` is scraped
every ``--scrape-interval`` for each model's replicas (``kaltstart_replicas{state="desired"|"ready"}``).

A request *waited on a cold start* if the last scrape before it was sent showed 0 ready replicas for its model.
(A replica that became ready less than one scrape interval before the request was sent is not seen yet, so such
a request counts as cold: the attribution errs by at most one interval.) ``cold_starts`` is the increase of the
gateway's ``kaltstart_cold_starts_total`` over the run: scale-ups from zero, however many requests each served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtest import prometheus
from loadtest.children import running_gateway, scratch_dir
from loadtest.client import completion, prompt_of, stream_completion
from loadtest.progress import Progress
from loadtest.report import Table, finish, write_csv
from loadtest.results import ReplayResult, ReplicaSample, RequestRecord
from loadtest.stats import ms, percentile
from loadtest.trace import TraceRequest, add_trace_arguments, spread, trace_from_args

__all__ = ["ReplayOptions", "add_arguments", "replay", "run", "summarise"]


@dataclass(frozen=True)
class ReplayOptions:
    stream: bool = True
    timeout_s: float = 600.0
    scrape_interval_s: float = 0.2


class ReplicaWatch:
    """Scrapes the gateway's /metrics and remembers each model's ready replicas as last seen."""

    def __init__(self, session: aiohttp.ClientSession, url: str, started: float) -> None:
        self._session = session
        self._url = url + "/metrics"
        self._started = started
        self.ready: dict[str, float] = {}
        self.samples: list[ReplicaSample] = []

    async def scrape(self) -> prometheus.Scrape | None:
        try:
            async with self._session.get(self._url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    return None
                scrape = prometheus.parse(await response.text())
        except (aiohttp.ClientError, TimeoutError):
            return None
        now = time.monotonic() - self._started
        desired = scrape.by_model("kaltstart_replicas", state="desired")
        ready = scrape.by_model("kaltstart_replicas", state="ready")
        for model, count in ready.items():
            self.samples.append(ReplicaSample(now, model, desired.get(model, count), count))
        self.ready = ready
        return scrape

    async def watch(self, interval_s: float) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(interval_s)  # a sampling period, not a wait for an event

    def cold(self, model: str) -> bool | None:
        ready = self.ready.get(model)
        return None if ready is None else ready == 0


def _cold_start_total(scrape: prometheus.Scrape | None) -> float | None:
    return None if scrape is None else scrape.total("kaltstart_cold_starts_total")


def _body(request: TraceRequest, index: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": prompt_of(request.prompt_tokens, salt=index),
        "max_tokens": request.output_tokens,
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def replay(
    session: aiohttp.ClientSession, url: str, trace: Sequence[TraceRequest], options: ReplayOptions
) -> ReplayResult:
    """Send ``trace`` (models already assigned) to the gateway at ``url`` on its schedule."""
    started = time.monotonic()
    watch = ReplicaWatch(session, url, started)
    before = _cold_start_total(await watch.scrape())
    scraper = asyncio.create_task(watch.watch(options.scrape_interval_s))
    records: list[RequestRecord] = []

    async def send(index: int, request: TraceRequest, progress: Progress) -> None:
        sent = time.monotonic() - started
        cold = watch.cold(request.model)
        body = _body(request, index, options.stream)
        call = stream_completion if options.stream else completion
        outcome = await call(session, url + "/v1/completions", body, options.timeout_s)
        records.append(RequestRecord(index, request, sent, cold, outcome))
        progress.advance()
        if not outcome.ok:
            progress.note(f"{sum(not r.outcome.ok for r in records)} errors")

    try:
        with Progress("replay", total=len(trace)) as progress:
            async with asyncio.TaskGroup() as group:
                for index, request in enumerate(trace):
                    await asyncio.sleep(max(0.0, started + request.at_s - time.monotonic()))  # the trace's pacing
                    group.create_task(send(index, request, progress))
        duration = time.monotonic() - started
    finally:
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
    after = _cold_start_total(await watch.scrape())
    cold_starts = None if before is None or after is None else round(after - before)
    records.sort(key=lambda r: r.index)
    return ReplayResult(records, watch.samples, cold_starts, duration, sorted({r.model for r in trace}))


def _latency_figures(records: Sequence[RequestRecord], prefix: str = "") -> dict[str, float | None]:
    latencies = [r.outcome.latency_s for r in records if r.outcome.ok]
    return {
        f"{prefix}p50_ms": ms(percentile(latencies, 50)),
        f"{prefix}p95_ms": ms(percentile(latencies, 95)),
        f"{prefix}p99_ms": ms(percentile(latencies, 99)),
    }


def summarise(result: ReplayResult) -> dict[str, Any]:
    records = result.records
    ok = [r for r in records if r.outcome.ok]
    ttfts = [r.outcome.ttft_s for r in ok if r.outcome.ttft_s is not None]
    errors = Counter(r.outcome.error for r in records if not r.outcome.ok)
    known = [r for r in records if r.cold is not None]
    tokens = sum(r.outcome.completion_tokens or 0 for r in ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": dict(sorted(errors.items())),
        "cold_starts": result.cold_starts,
        "cold_requests": sum(bool(r.cold) for r in known) if known else None,
        **_latency_figures(records),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p95_ms": ms(percentile(ttfts, 95)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        **_latency_figures([r for r in records if r.cold is False], "warm_"),
        **_latency_figures([r for r in records if r.cold], "cold_"),
        "duration_s": result.duration_s,
        "throughput_rps": len(ok) / result.duration_s if result.duration_s > 0 else None,
        "tokens_per_s": tokens / result.duration_s if result.duration_s > 0 else None,
        "models": result.models,
    }


def tables(result: ReplayResult, summary: dict[str, Any]) -> list[Table]:
    title = f"replay: {len(result.records)} requests in {result.duration_s:.0f} s (cold: sent while 0 replicas ready)"
    overview = Table(title, ["model", "requests", "ok", "errors", "cold", "p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms"])
    for model in result.models:
        records = [r for r in result.records if r.request.model == model]
        overview.add(model, *_row(records))
    if len(result.models) > 1:
        overview.add("all", *_row(result.records))
    totals = Table("totals", ["figure", "value"])
    for key in ("cold_starts", "cold_requests", "warm_p50_ms", "cold_p50_ms", "ttft_p99_ms", "duration_s"):
        totals.add(key, summary[key])
    totals.add("throughput (req/s)", summary["throughput_rps"])
    totals.add("completion tokens/s", summary["tokens_per_s"])
    errors = Table("errors by status", ["status", "count"])
    for status, count in summary["errors_by_status"].items():
        errors.add(status, count)
    return [overview, totals] + ([errors] if errors.rows else [])


def _row(records: Sequence[RequestRecord]) -> list[object]:
    ok = [r for r in records if r.outcome.ok]
    ttfts = [r.outcome.ttft_s for r in ok if r.outcome.ttft_s is not None]
    figures = _latency_figures(records)
    cold = sum(bool(r.cold) for r in records)
    return [len(records), len(ok), len(records) - len(ok), cold, *figures.values(), ms(percentile(ttfts, 50))]


def write_results(result: ReplayResult, out: Path) -> None:
    write_csv(
        out / "requests.csv",
        ["index", "model", "scheduled_s", "sent_s", "prompt_tokens", "max_tokens", "status", "error", "cold",
         "ttft_s", "latency_s", "completion_tokens"],
        (
            [r.index, r.request.model, r.request.at_s, r.sent_s, r.request.prompt_tokens, r.request.output_tokens,
             r.outcome.status, r.outcome.error, r.cold, r.outcome.ttft_s, r.outcome.latency_s,
             r.outcome.completion_tokens]
            for r in result.records
        ),
    )  # fmt: skip
    write_csv(
        out / "replicas.csv",
        ["t_s", "model", "desired", "ready"],
        ([s.t_s, s.model, s.desired, s.ready] for s in result.samples),
    )
    from loadtest.plots import plot_replay

    plot_replay(result, out / "replay.png")


def _absolute(text: str) -> Path:
    return Path(text).resolve()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running gateway, e.g. http://127.0.0.1:8080")
    target.add_argument(
        "--config", type=_absolute, help="start a local gateway (python -m gateway) with this TOML config for the run"
    )
    parser.add_argument(
        "--models", help="comma-separated models to spread requests over. Default: every model of /v1/models"
    )
    parser.add_argument(
        "--scale-interval", type=float, default=None, metavar="S", help="with --config: autoscaler period"
    )
    parser.add_argument("--redis-url", help="with --config: the gateway's Redis. Default: an embedded Valkey")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per-request timeout. Default 600")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="do not stream (no TTFT)")
    parser.add_argument("--scrape-interval", type=float, default=0.2, metavar="S", help="/metrics period. Default 0.2")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="client connection limit. Default 1000")
    parser.add_argument("--out", type=Path, help="write requests.csv, replicas.csv, replay.png, summary.json here")
    add_trace_arguments(parser)


async def _list_models(session: aiohttp.ClientSession, url: str) -> list[str]:
    try:
        async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as response:
            response.raise_for_status()
            return [m["id"] for m in (await response.json())["data"]]
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        raise SystemExit(f"cannot list the gateway's models ({exc}); name them with --models") from None


#: How long the load generator keeps an idle connection: shorter than any server's keep-alive it talks to.
CLIENT_KEEP_ALIVE_S = 2.0


async def run(args: argparse.Namespace) -> int:
    trace = trace_from_args(args)
    options = ReplayOptions(stream=args.stream, timeout_s=args.timeout, scrape_interval_s=args.scrape_interval)
    # Idle connections are dropped after 2 s, before the gateway's own keep-alive (KALTSTART_KEEP_ALIVE, 5 s) closes
    # them: a POST sent on a socket the server is closing at that moment fails with a connection error, and POST is
    # not retried (aiohttp's default, 15 s, cost one request of 1,966 in the archived replay).
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, keepalive_timeout=CLIENT_KEEP_ALIVE_S)
    with scratch_dir(args.out) as work:
        async with aiohttp.ClientSession(connector=connector) as session, contextlib.AsyncExitStack() as stack:
            url = args.url.rstrip("/") if args.url else None
            if url is None:
                log = work / "gateway.log"
                gateway = await stack.enter_async_context(
                    running_gateway(args.config, log, scale_interval_s=args.scale_interval, redis_url=args.redis_url)
                )
                url = gateway.url
            models = args.models.split(",") if args.models else await _list_models(session, url)
            result = await replay(session, url, spread(trace, models, args.seed), options)
    summary = summarise(result)
    if args.out is not None:
        write_results(result, args.out)
    finish(tables(result, summary), summary, args.out)
    return 0
