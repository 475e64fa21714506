"""``python -m loadtest bench lora``: what serving LoRA adapters costs, on one runtime (issue #29).

**Throughput.** One ``python -m runtime`` process (the demo model by default, ``--max-adapters 8``) gets batches of
16 greedy requests (``POST /v1/batch``) in turns: the base model alone, and 16 rows over ``ADAPTERS`` different
rank-``--rank`` adapters (two rows each), all resident after the warm-up. The sides alternate which goes first, so
load from elsewhere on the machine falls on both alike. ``ratio`` is the adapters' tokens/s over the base's (target:
at least 0.7 on CPU). The runtime gets ``OMP_NUM_THREADS=--threads`` and its threads are pinned to that many cores,
as in ``bench structured``.

**Cold load.** In this process, on the same model: a fresh engine, and ``--cold-loads`` adapters of that rank that
are in the node-local cache but not on the device; each one's load is timed from the request for it until its slot
is ready (cache hit checked, files read and checked on the adapters thread, copied into the slot): the target is at
most 50 ms for rank 16 on the demo model.

The adapters are random, written in PEFT's format by this bench itself (``write_adapter``: no peft needed), every
linear layer of the attention and the MLP targeted, B nonzero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import aiohttp

from loadtest.batching import post_batch
from loadtest.children import running_runtime, scratch_dir
from loadtest.client import prompt_of
from loadtest.models import demo_model
from loadtest.progress import Progress
from loadtest.report import Table, finish
from loadtest.stats import ratio
from loadtest.structured import pin_threads
from runtime.settings import Device

__all__ = ["ADAPTERS", "LoraOptions", "add_arguments", "bench", "run", "write_adapter"]

BATCH = 16
ADAPTERS = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_MODEL = "bench"


@dataclass(frozen=True)
class LoraOptions:
    rounds: int = 4
    max_tokens: int = 64
    prompt_tokens: int = 20
    rank: int = 16
    cold_loads: int = 5
    device: Device = "auto"
    threads: int | None = 1


@dataclass
class Side:
    name: str
    adapters: int
    seconds: float = 0.0
    completion_tokens: int = 0
    errors: int = 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.seconds if self.seconds > 0 else None


def write_adapter(model: Path, into: Path, rank: int, seed: int) -> Path:
    """A random LoRA adapter of ``model`` in PEFT's format: every ``TARGETS`` layer, A and B drawn with a spread
    that changes the output."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    with safe_open(model / "model.safetensors", "pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is no mapping)
            module = key.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] in TARGETS and key.endswith(".weight"):
                out_features, in_features = weights.get_slice(key).get_shape()
                prefix = f"base_model.model.{module}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.1
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.1
    into.mkdir(parents=True, exist_ok=True)
    save_file(tensors, into / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS)}
    (into / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(model)}))
    return into


def _body(prompts: Sequence[str], max_tokens: int, adapters: Sequence[Path]) -> dict[str, Any]:
    requests: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        request: dict[str, Any] = {
            "id": f"r{i}",
            "prompt": prompt,
            "params": {"max_tokens": max_tokens, "temperature": 0},
        }
        if adapters:
            adapter = adapters[i % len(adapters)]
            request["adapter"] = {"name": adapter.name, "source": str(adapter)}
        requests.append(request)
    return {"model": _MODEL, "requests": requests}


async def measure(
    session: aiohttp.ClientSession, url: str, adapters: Sequence[Path], options: LoraOptions
) -> list[Side]:
    prompts = [prompt_of(options.prompt_tokens, salt=i) for i in range(BATCH)]
    sides = [Side("base model", 0), Side(f"{len(adapters)} adapters, rank {options.rank}", len(adapters))]
    for side in sides:  # warm-up: loads the adapters, and the first batches pay for allocations
        await post_batch(session, url, _body(prompts, 4, adapters[: side.adapters]))
    with Progress("lora", total=options.rounds * len(sides) * BATCH) as progress:
        for turn in range(options.rounds):
            for side in sides if turn % 2 == 0 else sides[::-1]:
                started = time.perf_counter()
                body = _body(prompts, options.max_tokens, adapters[: side.adapters])
                tokens, errors = await post_batch(session, url, body)
                side.seconds += time.perf_counter() - started
                side.completion_tokens += tokens
                side.errors += errors
                progress.advance(BATCH)
    return sides


def cold_loads(model: Path, work: Path, options: LoraOptions) -> list[dict[str, float]]:
    """Each of ``cold_loads`` fresh adapters loaded from the node-local cache onto the device of a fresh engine:
    milliseconds in all, and of them fetching and reading (adapters thread) and installing (generation thread)."""
    from runtime.settings import RuntimeSettings
    from runtime.torch_engine.engine import TorchEngine
    from runtime.weights.cache import materialise
    from wire import AdapterRef

    cache = work / "cache-cold"
    settings = RuntimeSettings(model_name=_MODEL, source=str(model), cache_dir=cache, device=options.device)
    engine = TorchEngine(model, replace(settings, max_adapters=max(options.cold_loads, 1)))
    engine.load()
    adapters = engine.adapters
    assert adapters is not None
    timings = []
    for i in range(options.cold_loads):
        source = write_adapter(model, work / f"cold-{i}", options.rank, seed=1000 + i)
        materialise(str(source), cache)  # in the node-local cache, as after a first use elsewhere or a prefetch
        ref, loaded = AdapterRef(name=f"cold-{i}", source=str(source)), threading.Event()
        started = time.perf_counter()
        while isinstance(got := adapters.reserve(ref, loaded.set), str):
            loaded.wait(5.0)
        total = time.perf_counter() - started
        adapters.release((ref.name, ref.source))
        read_s, install_s = adapters.last_load or (0.0, 0.0)
        timings.append({"ms": total * 1e3, "read_ms": read_s * 1e3, "install_ms": install_s * 1e3, "slot": got})
    adapters.close()
    return timings


def summarise(sides: Sequence[Side], loads: list[dict[str, float]], options: LoraOptions, **run: Any) -> dict[str, Any]:
    base, adapted = sides
    cold = [load["ms"] for load in loads]
    return {
        "tokens_per_s_base": base.tokens_per_s,
        "tokens_per_s_adapters": adapted.tokens_per_s,
        "ratio": ratio(adapted.tokens_per_s, base.tokens_per_s),
        "batch": BATCH,
        "adapters": adapted.adapters,
        "rank": options.rank,
        "requests": options.rounds * BATCH,
        "max_tokens": options.max_tokens,
        "completion_tokens_base": base.completion_tokens,
        "completion_tokens_adapters": adapted.completion_tokens,
        "errors": base.errors + adapted.errors,
        "cold_load_ms_median": statistics.median(cold) if cold else None,
        "cold_load_ms_max": max(cold) if cold else None,
        "cold_loads": loads,
        "device": options.device,
        "threads": options.threads,
        **run,
    }


def tables(sides: Sequence[Side], summary: dict[str, Any]) -> list[Table]:
    throughput = Table(
        f"LoRA: batches of {BATCH}, {summary['requests']} requests per side, {summary['max_tokens']} new tokens each",
        ["side", "seconds", "completion tokens", "tokens/s", "errors"],
    )
    for side in sides:
        throughput.add(side.name, side.seconds, side.completion_tokens, side.tokens_per_s, side.errors)
    shown = f"{summary['ratio']:.2f}" if summary["ratio"] else None
    throughput.add("ratio (adapters / base)", None, None, shown, None)
    loads = Table(
        f"adapter cold load from the node-local cache, rank {summary['rank']} (ms)",
        ["adapter", "total", "fetch and read", "install"],
    )
    for i, load in enumerate(summary["cold_loads"]):
        loads.add(f"cold-{i}", load["ms"], load["read_ms"], load["install_ms"])
    return [throughput, loads]


async def bench(model: Path, work: Path, options: LoraOptions) -> tuple[list[Side], dict[str, Any]]:
    adapters = [write_adapter(model, work / f"adapter-{i}", options.rank, seed=i) for i in range(ADAPTERS)]
    flags = [
        "--model-name", _MODEL, "--source", str(model), "--cache-dir", str(work / "cache"),
        "--max-batch-size", str(BATCH), "--device", options.device, "--max-adapters", str(ADAPTERS),
    ]  # fmt: skip
    env = {} if options.threads is None else {"OMP_NUM_THREADS": str(options.threads)}
    async with (
        aiohttp.ClientSession() as session,
        running_runtime(flags, work / "runtime-lora.log", env=env) as runtime,
    ):
        cpus = pin_threads(runtime.child.process.pid, options.threads)
        sides = await measure(session, runtime.url, adapters, options)
    loads = await asyncio.to_thread(cold_loads, model, work, options)
    return sides, summarise(sides, loads, options, cpus_pinned=cpus)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="model directory. Default: .demo-model, or a fresh demo model")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of one batch per side. Default 4")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request. Default 64")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="prompt length in words. Default 20")
    parser.add_argument("--rank", type=int, default=16, help="the adapters' rank. Default 16")
    parser.add_argument("--cold-loads", type=int, default=5, help="adapters loaded cold, one by one. Default 5")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N", help="OMP_NUM_THREADS for the runtime (0: torch's). Default 1"
    )
    parser.add_argument("--out", type=Path, help="write the runtime log and summary.json here")


async def run(args: argparse.Namespace) -> int:
    options = LoraOptions(
        args.rounds,
        args.max_tokens,
        args.prompt_tokens,
        args.rank,
        args.cold_loads,
        cast("Device", args.device),
        args.threads or None,
    )
    with scratch_dir(args.out) as work:
        model = await demo_model(args.model, work)
        sides, summary = await bench(model, work, options)
    finish(tables(sides, summary), summary, args.out)
    return 0
