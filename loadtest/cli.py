"""The command line: one sub-command per module, each with ``add_arguments(parser)`` and ``async run(args)``.

Ctrl-C and SIGTERM cancel the running command; its context managers then stop every child process it started.
A command that succeeds and wrote ``OUT/summary.json`` gets ``provenance`` added to that file (``loadtest.provenance``:
commit, date, machine, load average before and after, its arguments); the JSON line it printed is left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from loadtest import provenance
from loadtest.children import StartError

__all__ = ["main", "parser"]


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    async def run(self, args: argparse.Namespace) -> int: ...


def _commands() -> dict[str, tuple[str, _Command]]:
    from loadtest import (
        archive,
        batching,
        coldstart,
        continuous,
        gpu,
        library,
        lora,
        overhead,
        poolbench,
        relay,
        replay,
        scale,
        simulate,
        structured,
        upstream,
    )

    return {
        "replay": ("replay a request trace against a gateway", replay),
        "simulate": ("run a trace through the scaling policy on a virtual clock", simulate),
        "bench overhead": ("the gateway's own cost: an echo runtime, direct vs through the gateway", overhead),
        "bench relay": ("streamed tokens: an echo runtime, direct vs through the gateway", relay),
        "bench upstream": ("an OpenAI-compatible server (transformers serve), direct vs through the gateway", upstream),
        "bench batching": ("one runtime, the same requests in batches of 1 and 16", batching),
        "bench coldstart": ("a cold start from zero replicas, phase by phase", coldstart),
        "bench pool": ("one model parked / absent in a pool runtime vs a cold start of its own replica", poolbench),
        "bench continuous": ("one replica, a static against a continuous (step-level) scheduler", continuous),
        "bench library": ("in process: our static and continuous schedulers against transformers' manager", library),
        "bench structured": ("one runtime, batches of 16 with and without a JSON Schema on every row", structured),
        "bench lora": ("one runtime, batches of 16 over 8 LoRA adapters vs the base model; adapter cold load", lora),
        "bench scale": ("one gateway serving 10 to 1,000 models (Kubernetes backend, API double): idle cost", scale),
        "report": ("the README's 'Measure it' table from archived summaries (loadtest/results/)", archive),
        "gpu": ("bench batching, continuous and coldstart with a ~1B random Llama on CUDA; vLLM if installed", gpu),
    }


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="kaltstart load tests. Each command prints tables, then one JSON object as its last line.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="command")
    bench = None
    for name, (summary, module) in _commands().items():
        group, _, sub = name.partition(" ")
        if sub:
            if bench is None:
                benchmarks = (
                    "overhead, relay, upstream, batching, coldstart, pool, continuous, library, structured, lora, scale"
                )
                bench_parser = commands.add_parser(group, help=f"benchmarks: {benchmarks}")
                bench = bench_parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")
            command = bench.add_parser(sub, help=summary, description=_describe(module))
        else:
            command = commands.add_parser(name, help=summary, description=_describe(module))
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return top


def _describe(module: object) -> str:
    return (getattr(module, "__doc__", None) or "").strip()


async def _interruptible(work: Coroutine[Any, Any, int]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(words)
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.run
    start = provenance.begin(args, words)
    try:
        returncode = asyncio.run(_interruptible(run(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("loadtest: interrupted; child processes stopped", file=sys.stderr)
        return 130
    except StartError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    if returncode == 0:
        provenance.stamp(getattr(args, "out", None), start)
    return returncode
