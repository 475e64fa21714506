"""``python -m loadtest bench continuous``: a step-level (continuous) scheduler against one batch at a time.

One local gateway (``python -m gateway``, its own embedded Valkey) serves the same model (the demo model by default)
under two names, each with exactly one replica (min and max replicas 1), started and warmed before anything is
measured:

- ``demo-static``: its runtime runs ``--scheduler static``, one batch at a time, start to finish, and the gateway
  keeps one batch in flight to it;
- ``demo-continuous``: ``--scheduler continuous``: new requests join the running batch at the next decoding step
  and finished ones leave at once, and the gateway forwards queued requests while a batch runs, as long as the
  replica reports free rows.

One gateway with two models rather than two gateways, so that the gateway process, its Valkey and the load
generator are the very same for both sides; the replica not being measured waits for work and takes no CPU. The
runtimes get ``OMP_NUM_THREADS=1`` (``--threads``; see ``threads`` below). Both models get the same
``max-batch-delay``, none by default (``0ms``): the gateway waits that long for a batch to fill only before
sending to a static replica (``gateway.dispatch.window``), so a window there would be a second difference besides
the scheduler; ``batching_window_ms_*`` report the window each side really got. Both measurements run on both
sides, one side after the other, ``--repeat`` times (5), and which side goes first alternates from one repetition
to the next (and from one rate to the next), so that load from elsewhere falls on both alike:

1. Open loop: Poisson arrivals (seeded) at each of ``--rates`` requests/s for ``--duration`` seconds, the same
   arrival times and lengths for both sides and for every repetition (and the n-th request's lengths the same at
   every rate); each repetition sweeps all the rates, lowest first. Output
   lengths are drawn from the bundled Azure code trace, scaled by ``--output-scale`` and clamped to [4, 200] tokens
   (the demo model's context is 512 tokens), and sent as ``max_tokens`` with ``temperature 0``: the random demo
   model practically never emits end-of-sequence, so each request generates that many tokens. Prompts are the
   trace's prompt lengths x 0.05, 4 to 200 words. Requests stream, so time to first token (TTFT) is measured.
   Throughput is completion tokens over first send to last answer; every request is waited for, so a side that
   falls behind pays for its backlog. A side's figure at a rate is the median over the repetitions (its errors the
   sum), a ratio is continuous's median over static's, and each ratio comes with the interquartile range of the
   per-repetition ratios and a seeded bootstrap 95 % interval (``loadtest.continuous_report``).
2. Short behind long: a short request (4 tokens) alone, then the same sent while one long request (400 tokens) is
   running (once the long one's first token has arrived), ``--repeat`` times each, alternating. The ratio is the
   median latency (send to last byte) behind the long one over the median alone.

The issue's targets ("Continuous batching") are printed as PASS/MISS lines next to the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.dispatch.window import window_s
from gateway.settings import ModelSettings
from loadtest.children import GatewayProcess, StartError, local_model, running_gateway, scratch_dir, write_config
from loadtest.client import Outcome, prompt_of, stream_completion
from loadtest.continuous_report import SCHEDULERS, summarise, tables, write_requests
from loadtest.models import demo_model
from loadtest.progress import Progress
from loadtest.report import finish
from loadtest.stats import percentile, ratio
from loadtest.trace import BUNDLED_AZURE, load_azure

__all__ = [
    "SCHEDULERS",
    "Arrival",
    "ContinuousOptions",
    "HeadOfLine",
    "RateRun",
    "add_arguments",
    "arrivals",
    "bench",
    "parse_rates",
    "run",
    "run_order",
    "summarise",
    "tables",
    "write_requests",
]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ContinuousOptions:
    rates: tuple[float, ...] = (8.0, 16.0, 26.0)
    duration_s: float = 20.0
    seed: int = 0
    output_scale: float = 1.0
    min_output_tokens: int = 4
    max_output_tokens: int = 200
    prompt_scale: float = 0.05
    max_prompt_tokens: int = 200
    short_tokens: int = 4
    long_tokens: int = 400
    #: Repetitions of each rate's open-loop run and of short behind long, on each side.
    repeat: int = 5
    max_batch_size: int = 16
    #: Both models' ``max-batch-delay``. None by default: the gateway applies it to static replicas only
    #: (``gateway.dispatch.window``), so anything else gives the static side a window the continuous one lacks.
    max_batch_delay: str = "0ms"
    engine: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    timeout_s: float = 600.0
    #: ``OMP_NUM_THREADS`` for the runtimes (None: torch's default, one thread per core). One by default: on a
    #: small shared machine torch's spinning worker threads fight the gateway and the client for the cores, and a
    #: step then takes 10 to 100 times as long, more so the busier the machine.
    threads: int | None = 1
    #: The served names are ``<name>-static`` and ``<name>-continuous``.
    name: str = "demo"

    def model(self, scheduler: str) -> str:
        return f"{self.name}-{scheduler}"

    def batching_window_s(self, scheduler: str) -> float:
        """The batching window the gateway really gives ``scheduler``'s replica (its own rule, not a copy)."""
        settings = ModelSettings.parse(self.model(scheduler), {"max-batch-delay": self.max_batch_delay})
        return window_s(settings, continuous=scheduler == "continuous")


@dataclass(frozen=True)
class Arrival:
    #: Seconds after the start of the run.
    at_s: float
    prompt_tokens: int
    max_tokens: int


def _clamp(value: float, low: int, high: int) -> int:
    return min(high, max(low, round(value)))


def lengths(options: ContinuousOptions) -> list[tuple[int, int]]:
    """(prompt words, max_tokens) of every request of the bundled Azure trace, scaled and clamped. The echo engine
    repeats the prompt's words, so for it a prompt is made at least as long as the output."""
    pool = []
    for request in load_azure(BUNDLED_AZURE):
        out = _clamp(request.output_tokens * options.output_scale, options.min_output_tokens, options.max_output_tokens)
        prompt = _clamp(request.prompt_tokens * options.prompt_scale, 4, options.max_prompt_tokens)
        pool.append((max(prompt, out) if options.engine == "echo" else prompt, out))
    return pool


def arrivals(rate: float, pool: Sequence[tuple[int, int]], options: ContinuousOptions) -> list[Arrival]:
    """Poisson arrivals at ``rate`` per second for ``duration_s``. The n-th request's lengths are the same at every
    rate (drawn from ``pool`` with the seed alone), so rates differ in spacing only; all the same for the same
    seed."""
    if rate <= 0:
        raise ValueError(f"rates must be positive, got {rate}")
    spacing = random.Random(f"continuous:{options.seed}:{rate:g}")
    draws = random.Random(f"continuous:{options.seed}")
    found = []
    at = spacing.expovariate(rate)
    while at < options.duration_s:
        prompt, out = draws.choice(pool)
        found.append(Arrival(at, prompt, out))
        at += spacing.expovariate(rate)
    return found


def _body(model: str, prompt_tokens: int, max_tokens: int, salt: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt_of(prompt_tokens, salt=salt),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class RateRun:
    """One side at one rate."""

    scheduler: str
    rate: float
    arrivals: list[Arrival]
    outcomes: list[Outcome | None] = field(default_factory=list)
    #: First send to last answer.
    seconds: float = 0.0
    #: The most a send lagged behind its schedule (the load generator's own delay; large means it could not keep up).
    late_s: float = 0.0
    #: Which repetition of this rate (from 0), and this run's place among all open-loop runs (0 ran first).
    repetition: int = 0
    position: int = 0

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o is not None and o.ok]

    @property
    def errors(self) -> int:
        return len(self.arrivals) - len(self.ok())

    @property
    def completion_tokens(self) -> int:
        return sum(o.completion_tokens or 0 for o in self.ok())

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.seconds if self.seconds > 0 and self.ok() else None

    def ttft(self, q: float) -> float | None:
        return percentile([o.ttft_s for o in self.ok() if o.ttft_s is not None], q)

    def latency(self, q: float) -> float | None:
        return percentile([o.latency_s for o in self.ok()], q)


async def _open_loop(
    session: aiohttp.ClientSession, url: str, side: RateRun, options: ContinuousOptions, progress: Progress
) -> None:
    model = options.model(side.scheduler)
    side.outcomes = [None] * len(side.arrivals)
    last_answer = 0.0

    async def send(index: int, arrival: Arrival) -> None:
        nonlocal last_answer
        body = _body(model, arrival.prompt_tokens, arrival.max_tokens, salt=index)
        outcome = await stream_completion(session, url + "/v1/completions", body, options.timeout_s)
        side.outcomes[index] = outcome
        last_answer = max(last_answer, time.perf_counter())
        progress.advance()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index, arrival in enumerate(side.arrivals):
            await asyncio.sleep(max(0.0, started + arrival.at_s - time.perf_counter()))  # the arrival schedule
            side.late_s = max(side.late_s, time.perf_counter() - started - arrival.at_s)
            group.create_task(send(index, arrival))
    first_send = started + (side.arrivals[0].at_s if side.arrivals else 0.0)
    side.seconds = max(0.0, last_answer - first_send)


@dataclass
class HeadOfLine:
    """A short request's latency alone and behind one long request, on one side."""

    scheduler: str
    alone_s: list[float] = field(default_factory=list)
    behind_s: list[float] = field(default_factory=list)
    #: Times the long request was still running when the short one had its answer (else it was no test).
    overlapped: int = 0
    errors: int = 0
    #: Behind over alone, per repetition in which both were answered.
    paired: list[float] = field(default_factory=list)

    @property
    def alone_median(self) -> float | None:
        return percentile(self.alone_s, 50)

    @property
    def behind_median(self) -> float | None:
        return percentile(self.behind_s, 50)

    @property
    def ratio(self) -> float | None:
        return ratio(self.behind_median, self.alone_median)


async def _short(session: aiohttp.ClientSession, url: str, options: ContinuousOptions, model: str) -> Outcome:
    body = _body(model, max(4, options.short_tokens) if options.engine == "echo" else 4, options.short_tokens, 1)
    return await stream_completion(session, url + "/v1/completions", body, options.timeout_s)


async def _head_of_line(session: aiohttp.ClientSession, url: str, side: HeadOfLine, options: ContinuousOptions) -> None:
    """One repetition: the short request alone, then behind the long one."""
    model = options.model(side.scheduler)
    alone = await _short(session, url, options, model)
    if alone.ok:
        side.alone_s.append(alone.latency_s)
    else:
        side.errors += 1
    long_prompt = max(8, options.long_tokens) if options.engine == "echo" else 8
    running = asyncio.Event()
    long_call = asyncio.create_task(
        stream_completion(
            session, url + "/v1/completions", _body(model, long_prompt, options.long_tokens, 2), options.timeout_s,
            first_token=running,
        )
    )  # fmt: skip
    first_token = asyncio.create_task(running.wait())
    await asyncio.wait([long_call, first_token], return_when=asyncio.FIRST_COMPLETED)  # running, or failed at once
    first_token.cancel()
    behind = await _short(session, url, options, model)
    if behind.ok:
        side.behind_s.append(behind.latency_s)
        side.overlapped += not long_call.done()
        if alone.ok and alone.latency_s > 0:
            side.paired.append(behind.latency_s / alone.latency_s)
    else:
        side.errors += 1
    if not (await long_call).ok:
        side.errors += 1


async def _warm(session: aiohttp.ClientSession, gateway: GatewayProcess, options: ContinuousOptions) -> None:
    """A batch's worth of short requests to each model: waits for its replica to be ready, pays first-use costs."""
    for scheduler in SCHEDULERS:
        model = options.model(scheduler)
        calls = [
            stream_completion(session, gateway.url + "/v1/completions", _body(model, 8, 4, i), options.timeout_s)
            for i in range(options.max_batch_size)
        ]
        failed = [o for o in await asyncio.gather(*calls) if not o.ok]
        if failed:
            raise StartError(f"{model} did not serve its warm-up requests ({failed[0].error}):\n{gateway.log.tail()}")


async def _reported_schedulers(
    session: aiohttp.ClientSession, gateway: GatewayProcess, models: Sequence[str]
) -> dict[str, str | None]:
    """What each replica's own ``/readyz`` says its scheduler is (None: it does not say), by model. Its URL is
    read from the gateway's log, waiting for the line: a replica that announced itself can serve the warm-up
    before the backend's probe logs it ready."""
    found: dict[str, str | None] = {}
    for model in models:
        pattern = re.compile(rf"replica {re.escape(model)}#\d+ is ready at (http://\S+)")
        try:
            match = await gateway.log.wait_for(pattern, 0, timeout_s=10)
            async with session.get(match.group(1) + "/readyz", timeout=aiohttp.ClientTimeout(total=10)) as response:
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError, StartError):
            continue
        found[model] = body.get("scheduler") if isinstance(body, dict) else None
    return found


@dataclass
class Measured:
    runs: list[tuple[RateRun, RateRun]]
    heads: list[HeadOfLine]
    reported: dict[str, str | None]


def _in_turn(pair: Sequence[Any], turn: int) -> list[Any]:
    """Both sides, the first one first on even turns, the other on odd ones."""
    return list(pair) if turn % 2 == 0 else list(pair)[::-1]


def run_order(options: ContinuousOptions) -> list[tuple[int, float, str]]:
    """(repetition, rate, scheduler) of every open-loop run, in the order they run: each repetition sweeps the
    rates, lowest first, and which side goes first alternates from one rate to the next and, at each rate, from
    one repetition to the next."""
    order = []
    for repetition in range(options.repeat):
        for index, rate in enumerate(options.rates):
            order += [(repetition, rate, s) for s in _in_turn(SCHEDULERS, repetition + index)]
    return order


async def measure(session: aiohttp.ClientSession, gateway: GatewayProcess, options: ContinuousOptions) -> Measured:
    await _warm(session, gateway, options)
    reported = await _reported_schedulers(session, gateway, [options.model(s) for s in SCHEDULERS])
    for scheduler in SCHEDULERS:
        said = reported.get(options.model(scheduler))
        if said is not None and said != scheduler:
            print(f"loadtest: the {scheduler} replica reports scheduler {said!r}", file=sys.stderr)
    heads = [HeadOfLine(s) for s in SCHEDULERS]
    with Progress("short behind long", total=options.repeat * len(heads)) as progress:
        for turn in range(options.repeat):
            for head in _in_turn(heads, turn):
                await _head_of_line(session, gateway.url, head, options)
                progress.advance()
    return Measured(await _open_loops(session, gateway, options), heads, reported)


async def _open_loops(
    session: aiohttp.ClientSession, gateway: GatewayProcess, options: ContinuousOptions
) -> list[tuple[RateRun, RateRun]]:
    """Every open-loop run, in ``run_order``; one (static, continuous) pair per rate and repetition."""
    pool = lengths(options)
    schedule = {rate: arrivals(rate, pool, options) for rate in options.rates}
    pairs = {
        (repetition, rate): (RateRun("static", rate, schedule[rate], repetition=repetition),
                             RateRun("continuous", rate, schedule[rate], repetition=repetition))
        for repetition in range(options.repeat) for rate in options.rates
    }  # fmt: skip
    total = sum(len(a) for a in schedule.values()) * len(SCHEDULERS) * options.repeat
    with Progress("open loop", total=total) as progress:
        for position, (repetition, rate, scheduler) in enumerate(run_order(options)):
            side = pairs[repetition, rate][SCHEDULERS.index(scheduler)]
            side.position = position
            progress.note(f"{rate:g} req/s, {scheduler}, repetition {repetition + 1}/{options.repeat}")
            await _open_loop(session, gateway.url, side, options, progress)
    return list(pairs.values())


async def _check_runtime_flag() -> None:
    """Fail fast, before any process starts, if ``python -m runtime`` does not know ``--scheduler`` (a replica
    would exit at once and the gateway would retry it until the cold-start timeout)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", "--help", cwd=_PROJECT_ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    if "--scheduler" not in output.decode(errors="replace"):
        raise StartError("python -m runtime does not accept --scheduler (no step-level scheduler in this checkout)")


def runtime_args(scheduler: str) -> tuple[str, ...]:
    """The extra ``python -m runtime`` flags of one side's replica."""
    return ("--scheduler", scheduler)


def write_models(model: Path, work: Path, options: ContinuousOptions) -> Path:
    """The gateway's config: the model twice, ``<name>-static`` and ``<name>-continuous``, one replica each, kept
    (min replicas 1, an hour's idle timeout), each runtime told its scheduler."""
    source = "none" if options.engine == "echo" else str(model.resolve())
    entries = [
        local_model(
            options.model(scheduler),
            source=source,
            engine=options.engine,
            device=options.device,
            dtype=options.dtype,
            args=runtime_args(scheduler),
            min_replicas=1,
            max_replicas=1,
            idle_timeout="3600s",
            max_batch_size=options.max_batch_size,
            max_batch_delay=options.max_batch_delay,
        )
        for scheduler in SCHEDULERS
    ]
    return write_config(work / "continuous.toml", entries, work / "cache")


def _warn_unequal_windows(options: ContinuousOptions) -> None:
    windows = {s: options.batching_window_s(s) for s in SCHEDULERS}
    if len(set(windows.values())) > 1:
        said = ", ".join(f"{s} {w * 1000:g} ms" for s, w in windows.items())
        note = "the gateway applies --max-batch-delay to static replicas only; 0ms compares the schedulers alone"
        print(f"loadtest: the sides get different batching windows ({said}): {note}", file=sys.stderr)


async def bench(
    model: Path, work: Path, options: ContinuousOptions, redis_url: str | None = None
) -> tuple[Measured, dict[str, Any]]:
    _warn_unequal_windows(options)
    await _check_runtime_flag()
    config = write_models(model, work, options)
    env = {} if options.threads is None else {"OMP_NUM_THREADS": str(options.threads)}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        running_gateway(config, work / "gateway-continuous.log", redis_url=redis_url, extra_env=env) as gateway,
    ):
        measured = await measure(session, gateway, options)
    return measured, summarise(measured, options)


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in re.split(r"[,\s]+", text.strip()) if r)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return tuple(sorted(rates))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = ContinuousOptions()
    parser.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    parser.add_argument(
        "--engine", default="torch", choices=("torch", "echo"), help="echo: checks the plumbing, measures no model"
    )
    parser.add_argument(
        "--rates", type=parse_rates, default=default.rates, metavar="R,R,R",
        help="Poisson arrival rates, requests/s. Default 8,16,26 (the highest saturates a static demo replica on 2 "
        "cores)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=default.duration_s, help="seconds of arrivals per rate")
    parser.add_argument("--seed", type=int, default=default.seed, help="seeds arrivals and lengths. Default 0")
    parser.add_argument("--output-scale", type=float, default=default.output_scale,
                        help="multiply the trace's output lengths by this (then clamp). Default 1")  # fmt: skip
    parser.add_argument("--min-output-tokens", type=int, default=default.min_output_tokens)
    parser.add_argument("--max-output-tokens", type=int, default=default.max_output_tokens)
    parser.add_argument("--short-tokens", type=int, default=default.short_tokens, help="the short request. Default 4")
    parser.add_argument("--long-tokens", type=int, default=default.long_tokens, help="the long request. Default 400")
    parser.add_argument(
        "--repeat", type=positive_int, default=default.repeat,
        help="repetitions of each rate's open-loop run and of short behind long, per side. Default 5",
    )  # fmt: skip
    parser.add_argument("--max-batch-size", type=int, default=default.max_batch_size, help="rows per replica")
    parser.add_argument(
        "--max-batch-delay", default=default.max_batch_delay,
        help="both models' max-batch-delay. Default 0ms: the gateway applies it to static replicas only",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--timeout", type=float, default=default.timeout_s, help="per request, seconds")
    parser.add_argument(
        "--threads", type=int, default=default.threads, metavar="N",
        help="OMP_NUM_THREADS for the runtimes; 0: torch's default. Default 1 (see the docstring)",
    )  # fmt: skip
    parser.add_argument("--redis-url", help="the gateway's Redis (REDIS_URL). Default: it starts an embedded Valkey")
    parser.add_argument("--out", type=Path, help="write continuous.png, requests.csv, the gateway log, summary.json")


def options_from_args(args: argparse.Namespace) -> ContinuousOptions:
    return ContinuousOptions(
        rates=args.rates,
        duration_s=args.duration,
        seed=args.seed,
        output_scale=args.output_scale,
        min_output_tokens=args.min_output_tokens,
        max_output_tokens=args.max_output_tokens,
        short_tokens=args.short_tokens,
        long_tokens=args.long_tokens,
        repeat=args.repeat,
        max_batch_size=args.max_batch_size,
        max_batch_delay=args.max_batch_delay,
        engine=args.engine,
        device=args.device,
        dtype=args.dtype,
        timeout_s=args.timeout,
        threads=args.threads or None,
    )


async def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    with scratch_dir(args.out) as work:
        model = work if options.engine == "echo" else await demo_model(args.model, work)
        measured, summary = await bench(model, work, options, args.redis_url)
    if args.out is not None:
        from loadtest.plots import plot_continuous

        plot_continuous(summary["rates"], SCHEDULERS, args.out / "continuous.png")
        write_requests(measured, args.out / "requests.csv")
    finish(tables(summary, options), summary, args.out)
    return 0
