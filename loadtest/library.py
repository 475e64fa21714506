"""``python -m loadtest bench library``: our schedulers against transformers' own continuous batching, in process.

One CPU model (the demo model by default) in this process, float32: this runtime's static and continuous schedulers
(their real runners, a batch's POSTs submitted at once, events through asyncio) against transformers' continuous
batching manager (``model.init_continuous_batching()``, paged KV cache) on its own copy of the model, capped at our
16 rows (its default of 1,024 would compare different batch sizes). Every side gets the same prompts (token ids),
greedy decoding and the same number of new tokens, no end-of-sequence stop, and the outputs are compared token for
token. Each figure is the best of ``--repeat`` runs after one warm-up run. Workloads:

- ``16x128``: 16 requests of 9 to 30 prompt tokens, 128 new tokens each, all at once;
- ``64x32``: 64 requests, 32 new tokens each, all at once: more than one batch of 16 rows, so rows leave and join;
- ``mixed``: 32 requests, alternately 16 and 128 new tokens, sent as 8 batches of 4 at once: where a static loop
  waits for each batch's longest request and a continuous one refills the rows at once.

The measurement behind "Our loop or the library's" in docs/runtime.md. ``--no-library`` measures our side only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.children import scratch_dir
from loadtest.models import demo_model
from loadtest.report import Table, finish
from runtime.scheduling.batches import Runner
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.scheduling.static import StaticScheduler
from wire import BatchEventAdapter, FinishEvent, GenerationRequest, SamplingParams

if TYPE_CHECKING:
    from runtime.torch_engine.engine import TorchEngine

__all__ = ["Measured", "Workload", "add_arguments", "run", "summarise", "workloads"]

#: Rows per batch on every side (our ``max_batch_size``, the library's ``max_requests_per_batch``).
ROWS = 16
#: The text the prompts are cut from (the prompts of the runs in docs/runtime.md).
_TEXT = (
    "the gateway keeps every request in a queue until a runtime is ready to take it and when no one has asked "
    "for a model in a while the runtime goes away"
)
_WORDS = _TEXT.split()
_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list[GenerationRequest]
    #: How many POSTs the requests arrive in, together.
    posts: int

    @property
    def tokens(self) -> int:
        return sum(r.params.max_tokens for r in self.requests)


@dataclass(frozen=True)
class Measured:
    """One side on one workload: the best time of the repeats, the texts of the last, the first (warm-up) run."""

    seconds: float
    texts: dict[str, str]
    first_run_s: float


def workloads(names: Sequence[str] | None = None) -> list[Workload]:
    def request(i: int, max_tokens: int) -> GenerationRequest:
        prompt = " ".join(_WORDS[: 1 + (i * 7) % len(_WORDS)])
        return GenerationRequest(id=f"r{i}", prompt=prompt, params=SamplingParams(max_tokens=max_tokens, temperature=0))

    every = [
        Workload("16x128", [request(i, 128) for i in range(16)], 1),
        Workload("64x32", [request(i, 32) for i in range(64)], 4),
        Workload("mixed", [request(i, 16 if i % 2 else 128) for i in range(32)], 8),
    ]
    return [w for w in every if names is None or w.name in names]


def split(requests: Sequence[GenerationRequest], parts: int) -> list[list[GenerationRequest]]:
    size = -(-len(requests) // parts)
    return [list(requests[i : i + size]) for i in range(0, len(requests), size)]


async def _texts(lines: AsyncIterator[bytes]) -> dict[str, str]:
    texts = {}
    async for line in lines:
        event = BatchEventAdapter.validate_json(line)
        if isinstance(event, FinishEvent):
            texts[event.id] = event.text
    return texts


async def _serve(runner: Runner, load: Workload) -> dict[str, str]:
    posts = [runner.submit(post).lines() for post in split(load.requests, load.posts)]
    async with asyncio.timeout(_TIMEOUT_S):
        results = await asyncio.gather(*(_texts(lines) for lines in posts))
    return {request_id: text for texts in results for request_id, text in texts.items()}


async def measure_ours(runner: Runner, loads: Sequence[Workload], repeat: int) -> dict[str, Measured]:
    """Each workload through ``runner`` as the server drives it. One runner (one generation thread) for all, as in
    a serving process: OpenMP keeps a spinning thread pool per thread that runs torch, and on 2 cores two such
    pools slow each other down several times over."""
    measured = {}
    try:
        for load in loads:
            started = time.monotonic()
            texts = await _serve(runner, load)  # the first run of a thread pays for OpenMP's start
            first_s, best = time.monotonic() - started, float("inf")
            for _ in range(repeat):
                started = time.monotonic()
                texts = await _serve(runner, load)
                best = min(best, time.monotonic() - started)
            measured[load.name] = Measured(best, texts, first_s)
    finally:
        runner.close()
    return measured


class Library:
    """transformers' continuous batching manager on its own copy of the model (the manager may switch the model's
    attention implementation), started once for every workload."""

    def __init__(self, model_dir: Path, engine: TorchEngine) -> None:
        import torch
        from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
        self._tokenizer = engine.tokenizer
        config = GenerationConfig(max_new_tokens=128, do_sample=False, eos_token_id=-1)  # type: ignore[no-untyped-call]
        limits = ContinuousBatchingConfig(max_requests_per_batch=ROWS)
        model.eval()
        self._manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=limits)
        self._manager.start()

    def run(self, load: Workload) -> dict[str, str]:
        ids = {r.id: list(self._tokenizer(r.prompt)["input_ids"]) for r in load.requests}
        for request in load.requests:
            self._manager.add_request(ids[request.id], request_id=request.id, max_new_tokens=request.params.max_tokens)
        texts: dict[str, str] = {}
        while len(texts) < len(load.requests):
            result = self._manager.get_result(timeout=60)
            if result is None:
                raise RuntimeError("the library's manager stopped answering")
            if result.is_finished():
                texts[result.request_id] = self._tokenizer.decode(result.generated_tokens, skip_special_tokens=True)
        return texts

    def stop(self) -> None:
        self._manager.stop(block=True)


def measure_library(
    model_dir: Path, engine: TorchEngine, loads: Sequence[Workload], repeat: int
) -> tuple[dict[str, Measured], float]:
    """Blocking: each workload through the library's manager; and the seconds its set-up took."""
    started = time.monotonic()
    library = Library(model_dir, engine)
    setup_s, measured = time.monotonic() - started, {}
    try:
        for load in loads:
            started = time.monotonic()
            texts = library.run(load)
            first_s, best = time.monotonic() - started, float("inf")
            for _ in range(repeat):
                started = time.monotonic()
                texts = library.run(load)
                best = min(best, time.monotonic() - started)
            measured[load.name] = Measured(best, texts, first_s)
    finally:
        library.stop()
    return measured, setup_s


def _rate(load: Workload, side: Measured | None) -> float | None:
    return None if side is None or side.seconds <= 0 else load.tokens / side.seconds


def _equal(ours: Measured, other: Measured | None) -> int | None:
    return None if other is None else sum(other.texts.get(i) == text for i, text in ours.texts.items())


def summarise(
    loads: Sequence[Workload],
    static: dict[str, Measured],
    continuous: dict[str, Measured],
    library: dict[str, Measured] | None,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The JSON: ``run`` (torch, its threads, repeat, the library's set-up time) and one entry per workload."""
    rows: dict[str, Any] = {}
    for load in loads:
        ours, lib = continuous[load.name], None if library is None else library[load.name]
        rows[load.name] = {
            "requests": len(load.requests),
            "posts": load.posts,
            "completion_tokens": load.tokens,
            "tokens_per_s_static": _rate(load, static[load.name]),
            "tokens_per_s_continuous": _rate(load, ours),
            "tokens_per_s_library": _rate(load, lib),
            "library_first_run_s": None if lib is None else lib.first_run_s,
            "static_equal_continuous": _equal(ours, static[load.name]),
            "library_equal_continuous": _equal(ours, lib),
        }
    return {**run, "rows": ROWS, "workloads": rows}


def table(summary: dict[str, Any]) -> Table:
    result = Table(
        f"tokens/s, best of {summary['repeat']}; torch {summary['torch']}, {summary['torch_threads']} threads",
        ["workload", "own static", "own continuous", "library", "library first run s", "equal outputs"],
    )
    for name, row in summary["workloads"].items():
        equal = [("static", row["static_equal_continuous"]), ("library", row["library_equal_continuous"])]
        result.add(
            name,
            row["tokens_per_s_static"],
            row["tokens_per_s_continuous"],
            row["tokens_per_s_library"],
            row["library_first_run_s"],
            ", ".join(f"{side} {n}/{row['requests']}" for side, n in equal if n is not None),
        )
    return result


async def bench(model: Path, loads: Sequence[Workload], repeat: int, library: bool) -> dict[str, Any]:
    import torch

    from runtime.settings import RuntimeSettings
    from runtime.torch_engine.engine import TorchEngine

    settings = RuntimeSettings(model_name="m", source=str(model), cache_dir=Path("/nonexistent"), device="cpu")
    engine = TorchEngine(model, settings)
    await asyncio.to_thread(engine.load)
    static = await measure_ours(StaticScheduler(engine, max_batch_size=ROWS), loads, repeat)
    continuous = await measure_ours(ContinuousScheduler(engine, Budget(rows=ROWS, tokens=16384)), loads, repeat)
    run: dict[str, Any] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "repeat": repeat}
    theirs = None
    if library:
        theirs, run["library_setup_s"] = await asyncio.to_thread(measure_library, model, engine, loads, repeat)
    return summarise(loads, static, continuous, theirs, run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [w.name for w in workloads()]
    parser.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per side and workload. Default 3")
    parser.add_argument(
        "--workloads", default=",".join(names), help=f"comma-separated, of {', '.join(names)}. Default: all"
    )
    parser.add_argument(
        "--library",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run transformers' manager (--no-library: our schedulers only)",
    )
    parser.add_argument("--out", type=Path, help="write summary.json here")


async def run(args: argparse.Namespace) -> int:
    chosen = [name.strip() for name in args.workloads.split(",") if name.strip()]
    loads = workloads(chosen)
    if len(loads) != len(chosen) or args.repeat < 1:
        names = ", ".join(w.name for w in workloads())
        print(f"loadtest: --workloads takes {names}; --repeat at least 1", file=sys.stderr)
        return 2
    with scratch_dir(args.out) as work:
        model = await demo_model(args.model, work)
        summary = await bench(model, loads, args.repeat, args.library)
    finish([table(summary)], summary, args.out)
    return 0
