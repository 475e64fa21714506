"""Request traces: the Azure LLM inference trace format, a synthetic sporadic pattern, and how both are shaped
(sliced, compressed in time, capped, scaled down to a tiny model, spread over several models).

A trace is a list of ``TraceRequest`` sorted by arrival; ``at_s`` counts from the start of the (sliced) trace.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

__all__ = [
    "BUNDLED_AZURE",
    "Shaping",
    "TraceRequest",
    "add_trace_arguments",
    "load_azure",
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
        help="'azure' (the bundled Azure LLM code trace), 'sporadic' (synthetic bursts), or a CSV path in the "
        "Azure format (TIMESTAMP,ContextTokens,GeneratedTokens). Default: azure",
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
