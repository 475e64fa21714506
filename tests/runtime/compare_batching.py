"""Continuous batching: transformers' own manager (paged KV cache) against this runtime's loop, on one CPU model.

    python -m tests.runtime.compare_batching --model .demo-model [--repeat 3]

Not a test (pytest does not collect it): the measurement behind the choice written down in docs/runtime.md. Every
side gets the same prompts (token ids), greedy decoding and the same number of new tokens, no end-of-sequence stop.
The library's outputs are compared with ours token for token. Workloads:

- ``16x128``: 16 requests of 9 to 30 prompt tokens, 128 new tokens each, all at once;
- ``64x32``: 64 requests, 32 new tokens each, all at once: more than one batch of 16 rows, so rows leave and join;
- ``mixed``: 32 requests, alternately 16 and 128 new tokens, sent as 8 batches of 4 at once: where a static loop
  waits for each batch's longest request and a continuous one refills the rows at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

from runtime.scheduling.batches import Runner
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.scheduling.static import StaticScheduler
from runtime.settings import RuntimeSettings
from runtime.torch_engine.engine import TorchEngine
from tests.runtime.support import WORDS, finishes, read_events
from wire import GenerationRequest, SamplingParams


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list[GenerationRequest]
    posts: int  # how many POSTs the requests arrive in, together


def workloads() -> list[Workload]:
    def request(i: int, max_tokens: int) -> GenerationRequest:
        prompt = " ".join(WORDS[: 1 + (i * 7) % len(WORDS)])
        return GenerationRequest(id=f"r{i}", prompt=prompt, params=SamplingParams(max_tokens=max_tokens, temperature=0))

    return [
        Workload("16x128", [request(i, 128) for i in range(16)], 1),
        Workload("64x32", [request(i, 32) for i in range(64)], 4),
        Workload("mixed", [request(i, 16 if i % 2 else 128) for i in range(32)], 8),
    ]


def split(requests: Sequence[GenerationRequest], parts: int) -> list[list[GenerationRequest]]:
    size = -(-len(requests) // parts)
    return [list(requests[i : i + size]) for i in range(0, len(requests), size)]


def measure_ours(runner: Runner, repeat: int) -> dict[str, tuple[float, dict[str, str]]]:
    """Each workload through ``runner`` as the server drives it: its POSTs submitted at once, events through
    asyncio. One runner (one generation thread) for all, as in a serving process: OpenMP keeps a spinning thread pool
    per thread that runs torch, and on 2 cores two such pools slow each other down several times over."""

    async def serve(load: Workload) -> dict[str, str]:
        posts = [runner.submit(post).lines() for post in split(load.requests, load.posts)]
        results = await asyncio.gather(*(read_events(lines, timeout_s=600) for lines in posts))
        return {request_id: finish.text for events in results for request_id, finish in finishes(events).items()}

    async def measure() -> dict[str, tuple[float, dict[str, str]]]:
        measured = {}
        for load in workloads():
            await serve(load)  # the first run of a thread pays for OpenMP's start
            best, texts = float("inf"), {}
            for _ in range(repeat):
                started = time.monotonic()
                texts = await serve(load)
                best = min(best, time.monotonic() - started)
            measured[load.name] = (best, texts)
        runner.close()
        return measured

    return asyncio.run(measure())


class Library:
    """transformers' continuous batching manager (``model.init_continuous_batching()``) on its own copy of the
    model (the manager may switch the model's attention implementation), started once for every workload."""

    def __init__(self, model_dir: Path, engine: TorchEngine) -> None:
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
        self._tokenizer = engine.tokenizer
        config = GenerationConfig(max_new_tokens=128, do_sample=False, eos_token_id=-1)  # type: ignore[no-untyped-call]
        limits = ContinuousBatchingConfig(max_requests_per_batch=16)  # as many rows as ours (its default: 1024)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = RuntimeSettings(model_name="m", source=str(args.model), cache_dir=Path("/nonexistent"), device="cpu")
    engine = TorchEngine(args.model, settings)
    engine.load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tokens/s, best of {args.repeat}")
    static = measure_ours(StaticScheduler(engine, max_batch_size=16), args.repeat)
    continuous = measure_ours(ContinuousScheduler(engine, Budget(rows=16, tokens=16384)), args.repeat)
    for load in workloads():
        assert static[load.name][1] == continuous[load.name][1], "static and continuous must agree"
        print(
            f"{load.name:7} own static {rate(load, static[load.name][0]):6.0f}   "
            f"own continuous {rate(load, continuous[load.name][0]):6.0f}"
        )
    started = time.monotonic()
    library = Library(args.model, engine)
    try:
        for load in workloads():
            first = time.monotonic()
            library.run(load)
            first_s = time.monotonic() - first
            best, texts = float("inf"), {}
            for _ in range(args.repeat):
                again = time.monotonic()
                texts = library.run(load)
                best = min(best, time.monotonic() - again)
            same = sum(texts[i] == continuous[load.name][1][i] for i in texts)
            print(
                f"{load.name:7} library {rate(load, best):6.0f} (first run {first_s:.2f} s); "
                f"outputs equal to ours: {same}/{len(texts)}"
            )
    finally:
        library.stop()
    print(f"library, all told (set-up, first runs, repeats): {time.monotonic() - started:.1f} s")


def rate(load: Workload, seconds: float) -> float:
    return sum(r.params.max_tokens for r in load.requests) / seconds


if __name__ == "__main__":
    main()
