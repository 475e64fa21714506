"""``python -m loadtest bench structured``: what a JSON Schema on every row costs, on one runtime.

One ``python -m runtime`` process (tiny demo model by default) gets the same chat requests twice per turn, as
batches of 16 (``POST /v1/batch``): once free, once with ``response_format`` ``json_schema`` on every row, so every
row's logits pass its grammar's mask at every step. The sides take turns on every group of 16 (and take turns going
first), so load from elsewhere on the machine falls on both alike. The schema (an object holding at least
``MIN_NOTES`` short strings) cannot be complete within ``max_tokens``, so both sides generate the same number of
tokens. ``ratio`` is the constrained side's tokens/s over the free side's (target: at least 0.8).

A third side sends the same schema with a new ``description`` on every batch, so the runtime's grammar cache never
holds it and every batch pays one cold compile (``ratio_cold_compile``): what a workload with ever-new schemas costs.

The same thread budget on both sides: the runtime gets ``OMP_NUM_THREADS=N`` (``--threads``) and, once ready, all
its threads are pinned to N cores, so llguidance's pool (which ignores ``OMP_NUM_THREADS``) shares those N cores
with torch rather than taking a core the free side never gets.

Then, in a child process, ``loadtest.masks`` measures the per-step mask cost at batch 16 on the same model's
tokenizer, per grammar library that is installed (llguidance; xgrammar if present), and the cold compile and step
cost of several schemas (``loadtest.masks.SCHEMAS``), with the same thread cap. ``--vocab-size N`` builds the demo
model with an N-token tokenizer (``runtime.weights.demo_model``), so the masks are as wide as a real model's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.batching import post_batch
from loadtest.children import running_runtime, scratch_dir
from loadtest.client import prompt_of
from loadtest.masks import measure_in_child
from loadtest.models import demo_model, python_child
from loadtest.progress import Progress
from loadtest.report import Table, finish
from loadtest.stats import ratio
from runtime.weights.demo_model import BUILD_REPORT

__all__ = ["SCHEMA", "StructuredOptions", "add_arguments", "bench", "pin_threads", "run", "tables"]

BATCH = 16
MIN_NOTES = 200
#: Every row's answer: ``{"notes": [...]}`` with at least ``MIN_NOTES`` strings of up to 24 characters.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "notes": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": MIN_NOTES},
    },
    "required": ["notes"],
    "additionalProperties": False,
}
_MODEL = "bench"


@dataclass(frozen=True)
class StructuredOptions:
    requests: int = 32
    max_tokens: int = 64
    prompt_tokens: int = 20
    rounds: int = 3
    device: str = "auto"
    dtype: str = "auto"
    #: ``OMP_NUM_THREADS`` for the runtime (None: torch's default). 1 (default) gives steady figures on a small
    #: shared machine, where torch's spinning worker threads fight everything else for the cores (measured: the
    #: free side's rate swung between 120 and 300 tokens/s with torch's default while other tests ran).
    threads: int | None = 1
    #: The demo model's vocabulary when the bench builds it (``--vocab-size``); None: the model as given or found.
    vocab_size: int | None = None


@dataclass
class Side:
    name: str
    constrained: bool
    #: A new schema every batch: every batch pays a cold compile.
    cold: bool = False
    seconds: float = 0.0
    completion_tokens: int = 0
    errors: int = 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.seconds if self.seconds > 0 else None


def _body(prompts: Sequence[str], max_tokens: int, side: Side, batch: int) -> dict[str, Any]:
    """The batch's requests; ``batch`` numbers a cold side's schema (a new ``description``: a new grammar text)."""
    schema = SCHEMA | {"description": f"batch {batch}"} if side.cold else SCHEMA
    extra = {"response_format": {"type": "json_schema", "json_schema": schema}} if side.constrained else {}
    return {
        "model": _MODEL,
        "requests": [
            {
                "id": f"r{i}",
                "messages": [{"role": "user", "content": prompt}],
                "params": {"max_tokens": max_tokens, "temperature": 0},
                **extra,
            }
            for i, prompt in enumerate(prompts)
        ],
    }


async def measure(session: aiohttp.ClientSession, url: str, options: StructuredOptions) -> list[Side]:
    prompts = [prompt_of(options.prompt_tokens, salt=i) for i in range(options.requests)]
    sides = [
        Side("free", constrained=False),
        Side("json_schema on every row", constrained=True),
        Side("json_schema, new schema every batch", constrained=True, cold=True),
    ]
    for side in sides:  # warm-up: the first batches pay for allocations and the grammar's compilation
        await post_batch(session, url, _body(prompts[:BATCH], 4, side, batch=-1))
    groups = [prompts[i : i + BATCH] for i in range(0, len(prompts), BATCH)]
    turns = [group for _ in range(options.rounds) for group in groups]
    with Progress("structured", total=len(turns) * len(sides) * BATCH) as progress:
        for turn, group in enumerate(turns):
            for side in sides if turn % 2 == 0 else sides[::-1]:
                started = time.perf_counter()
                body = _body(group, options.max_tokens, side, batch=turn)
                tokens, errors = await post_batch(session, url, body)
                side.seconds += time.perf_counter() - started
                side.completion_tokens += tokens
                side.errors += errors
                progress.advance(len(group))
    return sides


def summarise(
    sides: Sequence[Side], masks: list[dict[str, Any]], options: StructuredOptions, *, run: dict[str, Any]
) -> dict[str, Any]:
    """The summary; ``run`` adds the set-up's keys (``cpus_pinned``, ``tokenizer_build``)."""
    free, constrained, cold = sides
    return {
        "tokens_per_s_free": free.tokens_per_s,
        "tokens_per_s_json_schema": constrained.tokens_per_s,
        "ratio": ratio(constrained.tokens_per_s, free.tokens_per_s),
        "batch": BATCH,
        "requests": options.requests * options.rounds,
        "max_tokens": options.max_tokens,
        "completion_tokens_free": free.completion_tokens,
        "completion_tokens_json_schema": constrained.completion_tokens,
        "errors": free.errors + constrained.errors + cold.errors,
        "device": options.device,
        "masks": masks,
        "tokens_per_s_json_schema_cold": cold.tokens_per_s,
        "ratio_cold_compile": ratio(cold.tokens_per_s, free.tokens_per_s),
        "completion_tokens_json_schema_cold": cold.completion_tokens,
        "cold_compiles": options.rounds * -(-options.requests // BATCH),
        "threads": options.threads,
        "vocab_size": masks[0]["vocab"] if masks else None,
        **run,
    }


def tables(sides: Sequence[Side], summary: dict[str, Any]) -> list[Table]:
    throughput = Table(
        f"structured output: batches of {BATCH}, {summary['requests']} requests per side, "
        f"{summary['max_tokens']} new tokens each",
        ["side", "seconds", "completion tokens", "tokens/s", "errors"],
    )
    for side in sides:
        throughput.add(side.name, side.seconds, side.completion_tokens, side.tokens_per_s, side.errors)
    shown = f"{summary['ratio']:.2f}" if summary["ratio"] else None
    throughput.add("ratio (json_schema / free)", None, None, shown, None)
    cold = f"{summary['ratio_cold_compile']:.2f}" if summary["ratio_cold_compile"] else None
    throughput.add("ratio (new schema every batch / free)", None, None, cold, None)
    masks = Table(
        f"grammar mask per decoding step, batch {BATCH}, this model's tokenizer (ms; medians)",
        ["library", "vocab", "tokenizer set-up", "compile", "fill masks", "apply", "accept", "step"],
    )
    for row in summary["masks"]:
        masks.add(
            row["library"], row["vocab"], row["tokenizer_ms"], row["compile_ms"], row["fill_ms"], row["apply_ms"],
            row["accept_ms"], row["step_ms"],
        )  # fmt: skip
    schemas = Table(
        f"per schema, llguidance, vocab {summary['vocab_size']}: cold compile and mask per step, batch {BATCH} (ms)",
        ["schema", "compile (cold)", "fill masks", "apply", "accept", "step"],
    )
    for row in summary["masks"]:
        for name, cost in row.get("schemas", {}).items():
            schemas.add(name, cost["compile_ms"], cost["fill_ms"], cost["apply_ms"], cost["accept_ms"], cost["step_ms"])
    return [throughput, masks, schemas]


def pin_threads(pid: int, threads: int | None) -> list[int] | None:
    """Every thread of ``pid`` on the first ``threads`` of our cores (threads it makes later inherit that); the
    cores, or None when nothing is pinned (no cap, or not Linux)."""
    if threads is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)
    return cpus


async def bench(model: Path, work: Path, options: StructuredOptions) -> tuple[list[Side], dict[str, Any]]:
    flags = [
        "--model-name", _MODEL, "--source", str(model), "--cache-dir", str(work / "cache"),
        "--max-batch-size", str(BATCH), "--device", options.device, "--dtype", options.dtype,
    ]  # fmt: skip
    env = {} if options.threads is None else {"OMP_NUM_THREADS": str(options.threads)}
    async with (
        aiohttp.ClientSession() as session,
        running_runtime(flags, work / "runtime-structured.log", env=env) as runtime,
    ):
        cpus = pin_threads(runtime.child.process.pid, options.threads)
        sides = await measure(session, runtime.url, options)
    masks = await measure_in_child(model, batch=BATCH, threads=options.threads)
    return sides, summarise(sides, masks, options, run={"cpus_pinned": cpus, "tokenizer_build": _built(model)})


def _built(model: Path) -> dict[str, Any] | None:
    """How the demo model's tokenizer was made (trained and padded tokens), when it was built with a vocab size."""
    report = model / BUILD_REPORT
    built: dict[str, Any] | None = json.loads(report.read_text()) if report.is_file() else None
    return built


async def _model(given: Path | None, work: Path, vocab_size: int | None) -> Path:
    """``given``, else the demo model with ``vocab_size`` tokens (built in ``work``), else the demo model."""
    if vocab_size is None or given is not None:
        return await demo_model(given, work)
    target = work / f"demo-model-vocab{vocab_size}"
    await python_child("-m", "runtime.weights.demo_model", "--out", str(target), "--vocab-size", str(vocab_size))
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    parser.add_argument("--requests", type=int, default=32, help="requests per side and round. Default 32")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request. Default 64")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="prompt length in words. Default 20")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds. Default 3")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N", help="OMP_NUM_THREADS for the runtime (0: torch's). Default 1"
    )
    parser.add_argument(
        "--vocab-size", type=int, metavar="N", help="build the demo model with an N-token tokenizer (e.g. 32000); "
        "not with --model. Default: the demo model's 1024",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the runtime log and summary.json here")


async def run(args: argparse.Namespace) -> int:
    if args.model is not None and args.vocab_size is not None:
        raise SystemExit("bench structured: --vocab-size builds a demo model; it cannot be given with --model")
    options = StructuredOptions(
        args.requests, args.max_tokens, args.prompt_tokens, args.rounds, args.device, args.dtype, args.threads or None,
        args.vocab_size,
    )  # fmt: skip
    with scratch_dir(args.out) as work:
        model = await _model(args.model, work, args.vocab_size)
        sides, summary = await bench(model, work, options)
    finish(tables(sides, summary), summary, args.out)
    return 0
