"""``python -m loadtest bench batching``: what batching buys, on one runtime.

One ``python -m runtime`` process (tiny demo model by default) gets the same requests twice per round: as batches
of 1 and as batches of 16 (``POST /v1/batch``, one batch at a time, as a gateway dispatcher sends them). The
sides take turns on every group of 16 requests, and which goes first alternates, to be fair on a noisy machine.
Throughput is completion tokens per second of wall time; ``speedup`` is the ratio of the two, measured side by
side in the same process.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.children import running_runtime, scratch_dir
from loadtest.client import prompt_of
from loadtest.models import demo_model
from loadtest.progress import Progress
from loadtest.report import Table, finish
from loadtest.stats import ratio

__all__ = ["BatchingOptions", "add_arguments", "measure", "run"]

BATCH_SIZES = (1, 16)
_MODEL = "bench"


@dataclass(frozen=True)
class BatchingOptions:
    requests: int = 32
    max_tokens: int = 32
    prompt_tokens: int = 20
    rounds: int = 2
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class Side:
    batch_size: int
    seconds: float = 0.0
    completion_tokens: int = 0
    errors: int = 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.seconds if self.seconds > 0 else None


class BatchFailed(Exception):
    pass


async def _batch(session: aiohttp.ClientSession, url: str, prompts: Sequence[str], max_tokens: int) -> tuple[int, int]:
    """One ``POST /v1/batch`` of plain prompts: (completion tokens, requests that failed)."""
    requests = [
        {"id": f"r{i}", "prompt": p, "params": {"max_tokens": max_tokens, "temperature": 0}}
        for i, p in enumerate(prompts)
    ]
    return await post_batch(session, url, {"model": _MODEL, "requests": requests})


async def post_batch(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, int]:
    """One ``POST /v1/batch`` of ``body``, read to its end: (completion tokens, requests that failed)."""
    async with session.post(url + "/v1/batch", json=body, timeout=aiohttp.ClientTimeout(total=600)) as response:
        text = await response.text()
        if response.status != 200:
            raise BatchFailed(f"runtime answered {response.status}: {text[:300]}")
    tokens = errors = 0
    for line in filter(str.strip, text.splitlines()):
        event: dict[str, Any] = json.loads(line)
        if event.get("type") == "finish":
            tokens += int(event["usage"]["completion_tokens"])
        elif event.get("type") == "error":
            errors += 1
    return tokens, errors


async def _side(
    session: aiohttp.ClientSession, url: str, prompts: Sequence[str], side: Side, max_tokens: int, progress: Progress
) -> None:
    started = time.perf_counter()
    for start in range(0, len(prompts), side.batch_size):
        chunk = prompts[start : start + side.batch_size]
        tokens, errors = await _batch(session, url, chunk, max_tokens)
        side.completion_tokens += tokens
        side.errors += errors
        progress.advance(len(chunk))
    side.seconds += time.perf_counter() - started


async def measure(session: aiohttp.ClientSession, url: str, options: BatchingOptions) -> list[Side]:
    prompts = [prompt_of(options.prompt_tokens, salt=i) for i in range(options.requests)]
    sides = [Side(size) for size in BATCH_SIZES]
    for side in sides:  # warm-up: first batches of a size pay for allocations
        await _batch(session, url, prompts[: side.batch_size], 2)
    # The sides take turns on every group of 16 requests (and take turns going first), so that load from
    # elsewhere on the machine falls on both alike.
    groups = [prompts[i : i + max(BATCH_SIZES)] for i in range(0, len(prompts), max(BATCH_SIZES))]
    turns = [group for _ in range(options.rounds) for group in groups]
    with Progress("batching", total=options.rounds * len(sides) * len(prompts)) as progress:
        for turn, group in enumerate(turns):
            for side in sides if turn % 2 == 0 else sides[::-1]:
                await _side(session, url, group, side, options.max_tokens, progress)
    return sides


def summarise(sides: Sequence[Side], options: BatchingOptions) -> dict[str, Any]:
    one, many = sides
    return {
        "tokens_per_s_b1": one.tokens_per_s,
        "tokens_per_s_b16": many.tokens_per_s,
        "speedup": ratio(many.tokens_per_s, one.tokens_per_s),
        "requests": options.requests * options.rounds,
        "max_tokens": options.max_tokens,
        "prompt_tokens": options.prompt_tokens,
        "seconds_b1": one.seconds,
        "seconds_b16": many.seconds,
        "completion_tokens_b1": one.completion_tokens,
        "completion_tokens_b16": many.completion_tokens,
        "errors": one.errors + many.errors,
        "device": options.device,
    }


def table(sides: Sequence[Side], summary: dict[str, Any]) -> Table:
    result = Table(
        f"batching: {summary['requests']} requests per side, {summary['max_tokens']} new tokens each",
        ["batch size", "seconds", "completion tokens", "tokens/s", "errors"],
    )
    for side in sides:
        result.add(side.batch_size, side.seconds, side.completion_tokens, side.tokens_per_s, side.errors)
    result.add("speedup", None, None, f"{summary['speedup']:.1f}x" if summary["speedup"] else None, None)
    return result


async def bench(model: Path, work: Path, options: BatchingOptions) -> tuple[list[Side], dict[str, Any]]:
    flags = [
        "--model-name", _MODEL, "--source", str(model), "--cache-dir", str(work / "cache"),
        "--max-batch-size", str(max(BATCH_SIZES)), "--device", options.device, "--dtype", options.dtype,
    ]  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        running_runtime(flags, work / "runtime-batching.log") as runtime,
    ):
        sides = await measure(session, runtime.url, options)
    return sides, summarise(sides, options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    parser.add_argument("--requests", type=int, default=32, help="requests per side and round. Default 32")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per request. Default 32")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="prompt length in words. Default 20")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds. Default 2")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument("--out", type=Path, help="write batching.png, runtime log and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = BatchingOptions(args.requests, args.max_tokens, args.prompt_tokens, args.rounds, args.device, args.dtype)
    with scratch_dir(args.out) as work:
        model = await demo_model(args.model, work)
        sides, summary = await bench(model, work, options)
    if args.out is not None:
        from loadtest.plots import plot_batching

        plot_batching({f"batch size {s.batch_size}": s.tokens_per_s or 0.0 for s in sides}, args.out / "batching.png")
    finish([table(sides, summary)], summary, args.out)
    return 0
