"""Request traces: the Azure LLM inference trace format, synthetic patterns (sporadic bursts; periodic, bursty,
Poisson and diurnal arrivals for the keep-alive comparison), and how traces are shaped (sliced, compressed in time,
capped, scaled down to a tiny model, spread over several models).

A trace is a list of ``TraceRequest`` sorted by arrival; ``at_s`` counts from the start of the (sliced) trace.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

__all__ = [
    "BUNDLED_AZURE",
    "SYNTHETIC",
    "Shaping",
    "TraceRequest",
    "add_trace_arguments",
    "bursty",
    "diurnal",
    "load_azure",
    "periodic",
    "poisson",
    "shape",
    "sporadic",
    "spread",
    "trace_from_args",
]

#: The copy of the Azure LLM inference trace 2023 ("code") shipped with kaltstart; see traces/README.md.
BUNDLED_AZURE = Path(__file__).parent / "traces" / "azure_llm_2023_code.csv"


@dataclass(frozen=True)
class TraceRequest:
    #: Arrival, seconds after the start of the trace.
    at_s: float
    prompt_tokens: int
    output_tokens: int
    #: Which model the request is for ("" until ``spread`` assigns one).
    model: str = ""


def _timestamp(text: str) -> float:
    # The trace has 7 fractional digits ("18:17:03.9799600"); datetime parses at most 6.
    head, _, fraction = text.strip().partition(".")
    stamp = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


def load_azure(path: Path) -> list[TraceRequest]:
    """Read a CSV in the Azure LLM inference trace format: ``TIMESTAMP, ContextTokens, GeneratedTokens``."""
    with path.open(newline="") as handle:
        rows = [
            (_timestamp(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            for r in csv.DictReader(handle)
        ]
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort()
    start = rows[0][0]
    return [TraceRequest(at_s=t - start, prompt_tokens=p, output_tokens=g) for t, p, g in rows]


def sporadic(
    bursts: int, per_burst: int, burst_s: float, gap_s: float, prompt_tokens: int, output_tokens: int, seed: int
) -> list[TraceRequest]:
    """``bursts`` bursts of ``per_burst`` requests at random moments within ``burst_s`` seconds, separated by
    ``gap_s`` seconds of silence (from the end of one burst to the start of the next)."""
    rng = random.Random(seed)
    requests = []
    for burst in range(bursts):
        start = burst * (burst_s + gap_s)
        for _ in range(per_burst):
            requests.append(TraceRequest(start + rng.uniform(0, burst_s), prompt_tokens, output_tokens))
    return sorted(requests, key=lambda r: r.at_s)


def _request(at_s: float, rng: random.Random, prompt_tokens: int, output_tokens: int) -> TraceRequest:
    # Output lengths vary around the given one (a batch lasts as long as its longest request).
    return TraceRequest(at_s, prompt_tokens, max(1, round(rng.expovariate(1 / output_tokens))))


def periodic(
    hours: float, period_s: float, per_run: int, jitter_s: float, prompt_tokens: int, output_tokens: int, seed: int
) -> list[TraceRequest]:
    """A cron-like caller: every ``period_s`` (each run late by up to ``jitter_s``), ``per_run`` requests within
    a few seconds."""
    rng = random.Random(seed)
    runs = int(hours * 3600 // period_s)
    requests = [
        _request(run * period_s + rng.uniform(0, jitter_s) + rng.uniform(0, 3.0), rng, prompt_tokens, output_tokens)
        for run in range(runs)
        for _ in range(per_run)
    ]
    return sorted(requests, key=lambda r: r.at_s)


def poisson(hours: float, rate_per_s: float, prompt_tokens: int, output_tokens: int, seed: int) -> list[TraceRequest]:
    """Independent arrivals at ``rate_per_s`` on average: gaps with no pattern to learn."""
    rng = random.Random(seed)
    requests: list[TraceRequest] = []
    at = rng.expovariate(rate_per_s)
    while at < hours * 3600:
        requests.append(_request(at, rng, prompt_tokens, output_tokens))
        at += rng.expovariate(rate_per_s)
    return requests


def bursty(hours: float, prompt_tokens: int, output_tokens: int, seed: int) -> list[TraceRequest]:
    """Sessions of a person at work: 1-5 minutes of requests a few seconds apart, then a long gap (lognormal,
    median 20 minutes: most between 5 minutes and 1.5 hours)."""
    rng = random.Random(seed)
    requests: list[TraceRequest] = []
    at = 0.0
    while at < hours * 3600:
        end = at + rng.uniform(60, 300)
        while at < end:
            requests.append(_request(at, rng, prompt_tokens, output_tokens))
            at += rng.expovariate(1 / 8.0)
        at += rng.lognormvariate(math.log(1200), 0.8)
    return requests


def diurnal(hours: float, peak_per_s: float, prompt_tokens: int, output_tokens: int, seed: int) -> list[TraceRequest]:
    """Poisson arrivals whose rate follows the day: ``peak_per_s`` at 14:00, almost none at night (the rate is
    ``peak x ((1 - cos(2 pi (t - 2 h) / 24 h)) / 2) ** 3``, drawn by thinning)."""
    rng = random.Random(seed)
    requests: list[TraceRequest] = []
    at = 0.0
    while True:
        at += rng.expovariate(peak_per_s)
        if at >= hours * 3600:
            return requests
        phase = (1 - math.cos(2 * math.pi * (at - 2 * 3600) / 86400)) / 2
        if rng.random() < phase**3:
            requests.append(_request(at, rng, prompt_tokens, output_tokens))


#: The synthetic patterns ``--trace`` accepts besides ``sporadic``.
SYNTHETIC = ("periodic", "bursty", "poisson", "diurnal")


@dataclass(frozen=True)
class Shaping:
    #: Keep requests from this many (trace) seconds after the start...
    start_s: float = 0.0
    #: ...for this many (trace) seconds (None: to the end).
    duration_s: float | None = None
    #: Divide every time by this: 10 replays ten minutes of trace in one.
    speedup: float = 1.0
    #: Keep at most this many requests (the first ones).
    max_requests: int | None = None
    #: Multiply prompt lengths by this (a tiny model has a short context)...
    prompt_scale: float = 1.0
    #: ...and completion lengths by this.
    output_scale: float = 1.0
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None


def _scaled(tokens: int, scale: float, cap: int | None) -> int:
    value = max(1, round(tokens * scale))
    return min(value, cap) if cap is not None else value


def shape(trace: Sequence[TraceRequest], shaping: Shaping) -> list[TraceRequest]:
    """Slice, then compress time, then cap the count, then scale token counts. Times start at the slice start."""
    if shaping.speedup <= 0:
        raise ValueError("speedup must be positive")
    end = shaping.start_s + shaping.duration_s if shaping.duration_s is not None else float("inf")
    kept = [r for r in trace if shaping.start_s <= r.at_s < end]
    if shaping.max_requests is not None:
        kept = kept[: shaping.max_requests]
    return [
        replace(
            r,
            at_s=(r.at_s - shaping.start_s) / shaping.speedup,
            prompt_tokens=_scaled(r.prompt_tokens, shaping.prompt_scale, shaping.max_prompt_tokens),
            output_tokens=_scaled(r.output_tokens, shaping.output_scale, shaping.max_output_tokens),
        )
        for r in kept
    ]


def spread(trace: Sequence[TraceRequest], models: Sequence[str], seed: int) -> list[TraceRequest]:
    """Assign each request a model, uniformly at random (seeded, so a run can be repeated exactly)."""
    if not models:
        raise ValueError("no models to spread the trace over")
    rng = random.Random(seed)
    return [replace(r, model=rng.choice(models)) for r in trace]


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``replay`` and ``simulate`` share: where the trace comes from and how it is shaped."""
    source = parser.add_argument_group("trace")
    source.add_argument(
        "--trace",
        default="azure",
        help="'azure' (the bundled Azure LLM code trace), a synthetic pattern ('sporadic', 'periodic', 'bursty', "
        "'poisson[:rate]', 'diurnal[:peak rate]'), or a CSV path in the Azure format (TIMESTAMP,ContextTokens,"
        "GeneratedTokens). simulate takes several, comma-separated. Default: azure",
    )
    source.add_argument("--start", type=float, default=0.0, metavar="S", help="skip the first S trace seconds")
    source.add_argument("--duration", type=float, default=None, metavar="S", help="keep S trace seconds")
    source.add_argument("--speedup", type=float, default=1.0, help="compress time by this factor. Default 1")
    source.add_argument("--max-requests", type=int, default=None, metavar="N", help="keep the first N requests")
    source.add_argument(
        "--token-scale", type=float, default=1.0, help="multiply token counts by this (e.g. 0.05 for a tiny model)"
    )
    source.add_argument("--output-scale", type=float, default=None, help="multiply completion lengths by this instead")
    source.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N", help="cap prompt lengths")
    source.add_argument("--max-output-tokens", type=int, default=None, metavar="N", help="cap completion lengths")
    source.add_argument("--seed", type=int, default=0, help="seed for synthetic traces and model assignment")
    patterns = parser.add_argument_group("synthetic patterns (--trace periodic|bursty|poisson|diurnal)")
    patterns.add_argument(
        "--hours", type=float, default=None, help="length of the trace. Default 6 (bursty 12, diurnal 48)"
    )
    patterns.add_argument("--period", type=float, default=300.0, metavar="S", help="periodic: every S s. Default 300")
    patterns.add_argument("--jitter", type=float, default=10.0, metavar="S", help="periodic: late by up to S s. 10")
    patterns.add_argument("--per-run", type=int, default=3, help="periodic: requests per run. Default 3")
    patterns.add_argument(
        "--rate", default="1/120", metavar="R", help="poisson: requests/s (or poisson:R); diurnal: at the peak. 1/120"
    )
    synthetic = parser.add_argument_group("synthetic sporadic trace (--trace sporadic)")
    synthetic.add_argument("--bursts", type=int, default=3, help="number of bursts. Default 3")
    synthetic.add_argument("--burst-requests", type=int, default=8, help="requests per burst. Default 8")
    synthetic.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst. Default 2")
    synthetic.add_argument("--gap-seconds", type=float, default=30.0, help="idle gap between bursts. Default 30")
    synthetic.add_argument("--prompt-tokens", type=int, default=32, help="prompt length. Default 32")
    synthetic.add_argument("--output-tokens", type=int, default=16, help="completion length. Default 16")


def trace_from_args(args: argparse.Namespace) -> list[TraceRequest]:
    if args.trace == "sporadic":
        raw = sporadic(
            args.bursts,
            args.burst_requests,
            args.burst_seconds,
            args.gap_seconds,
            args.prompt_tokens,
            args.output_tokens,
            args.seed,
        )
    elif args.trace.partition(":")[0] in SYNTHETIC:
        raw = synthetic(args.trace, args)
    else:
        raw = load_azure(BUNDLED_AZURE if args.trace == "azure" else Path(args.trace))
    shaping = Shaping(
        start_s=args.start,
        duration_s=args.duration,
        speedup=args.speedup,
        max_requests=args.max_requests,
        prompt_scale=args.token_scale,
        output_scale=args.token_scale if args.output_scale is None else args.output_scale,
        max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens,
    )
    return shape(raw, shaping)


#: Hours of each synthetic pattern unless ``--hours`` says otherwise (a diurnal pattern needs days).
_DEFAULT_HOURS = {"periodic": 6.0, "bursty": 12.0, "poisson": 6.0, "diurnal": 48.0}


def _rate(text: str) -> float:
    """``0.5`` or ``1/60`` (requests per second)."""
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1)


def synthetic(spec: str, args: argparse.Namespace) -> list[TraceRequest]:
    """``pattern`` or ``pattern:rate`` (poisson, diurnal: requests per second, e.g. ``poisson:1/60``)."""
    pattern, _, rate_text = spec.partition(":")
    rate = _rate(rate_text) if rate_text else _rate(str(args.rate))
    hours = args.hours if args.hours is not None else _DEFAULT_HOURS[pattern]
    tokens = (args.prompt_tokens, args.output_tokens)
    if pattern == "periodic":
        return periodic(hours, args.period, args.per_run, args.jitter, *tokens, args.seed)
    if pattern == "bursty":
        return bursty(hours, *tokens, args.seed)
    if pattern == "poisson":
        return poisson(hours, rate, *tokens, args.seed)
    if pattern == "diurnal":
        return diurnal(hours, rate, *tokens, args.seed)
    raise ValueError(f"no synthetic pattern {pattern!r}")
