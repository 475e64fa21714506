"""``python -m loadtest gpu``: ``bench batching``, ``bench structured``, ``bench continuous`` and ``bench coldstart`` on
a CUDA machine, with a Llama of about 1B parameters (random weights, bfloat16; built locally, nothing is
downloaded).

Needs a machine where ``torch.cuda.is_available()``; it runs there unchanged and refuses elsewhere (exit code 2).
Sized to finish within 8 minutes on one recent GPU (an estimate, not yet measured on one: model build ~30 s,
batching ~1 to 2 min, structured output ~1 min, continuous ~2 to 3 min, cold starts with and without a standby
runtime ~1.5 min, the readers ~30 s); ``--deadline`` (default 480 s) stops it, children and all, if not. Steps: build
the model on the GPU (random init) and save it as safetensors, then one runtime process for the batching benchmark,
one for the structured-output benchmark (a JSON Schema on every row of batches of 16 against none, and the grammar
libraries' per-step mask cost on the model's tokenizer), then a local gateway with a static and a continuous replica
for the continuous-batching benchmark (Poisson arrivals at ``--rates``, for ``--duration`` s each), then two local
gateways for the cold-start benchmark, with and without a standby runtime, their cold starts alternating
(``load_gbps``, ``raw_read_gbps``, ``load_efficiency``), then the weight readers side by side on the same files in a
child process (``loadtest.readers``: ours, safetensors, and fastsafetensors and runai-model-streamer where the
``fastload`` extra is installed), with the machine's raw read and pinned host-to-device bandwidth. Prints all tables
and one JSON object with the keys of the benchmarks plus the model's size, ``h2d_gbps`` and the comparison under
``readers``.

``--device cpu --size tiny`` runs the same steps on a CPU with a tiny model, to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import batching, coldstart, coldstart_report, continuous, readers, structured
from loadtest.children import scratch_dir
from loadtest.models import SIZES, build_in_child
from loadtest.report import Table, finish

__all__ = ["GPU_RATES", "add_arguments", "cuda_available", "run"]

#: ``bench continuous`` on the GPU: a 1B model's decoding step takes some 10 to 30 ms there, so a static replica
#: (whose batches last as long as their longest request) should fall behind at the highest rate, a continuous one
#: not (an estimate, like the run time above).
GPU_RATES = (4.0, 8.0, 16.0)


def cuda_available() -> bool:
    """Asked in a child process, so that this one never initialises CUDA (the runtimes need the GPU)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True).returncode == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="1b", help="model shape. Default 1b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only to test the script")
    parser.add_argument("--requests", type=int, default=32, help="batching: requests per side and round")
    parser.add_argument("--max-tokens", type=int, default=64, help="batching: new tokens per request")
    parser.add_argument(
        "--rates", type=continuous.parse_rates, default=GPU_RATES, metavar="R,R,R",
        help="continuous: Poisson arrival rates, requests/s. Default 4,8,16",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0, help="continuous: seconds of arrivals per rate")
    parser.add_argument(
        "--continuous-repeat", type=continuous.positive_int, default=2,
        help="continuous: repetitions per rate (bench continuous's --repeat; its own default, 5, would not fit the "
        "deadline). Default 2",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2, help="cold starts to measure")
    parser.add_argument("--model", type=Path, help="use this model directory instead of building one")
    parser.add_argument("--deadline", type=float, default=480.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--out", type=Path, help="write the model, logs, plots and summary.json here")


async def run(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not cuda_available():
        print("loadtest gpu: torch sees no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    try:
        async with asyncio.timeout(args.deadline):
            return await _run(args)
    except TimeoutError:
        print(f"loadtest gpu: not finished within the deadline of {args.deadline:.0f} s", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    started = time.monotonic()
    with scratch_dir(args.out) as work:
        built: dict[str, Any]
        if args.model is not None:
            model, built = args.model, {"size": "given", "parameters": None, "bytes": None}
        else:
            model = work / f"llama-{args.size}"
            print(f"loadtest gpu: building a random {args.size} Llama on {args.device}", file=sys.stderr)
            built = await build_in_child(args.size, model, args.device)
        options = batching.BatchingOptions(args.requests, args.max_tokens, 20, 2, args.device, dtype)
        sides, batching_summary = await batching.bench(model, work, options)
        structured_options = structured.StructuredOptions(
            args.requests, args.max_tokens, 20, 2, args.device, dtype, threads=None if args.device == "cuda" else 1
        )
        structured_sides, structured_summary = await structured.bench(model, work, structured_options)
        continuous_options = continuous.ContinuousOptions(
            rates=args.rates, duration_s=args.duration, repeat=args.continuous_repeat, device=args.device, dtype=dtype,
            name="llama",
            threads=None if args.device == "cuda" else 1,
        )  # fmt: skip
        measured, continuous_summary = await continuous.bench(model, work, continuous_options)
        cold_options = coldstart.ColdStartOptions(args.repeat, args.device, dtype)
        (_, standby_summary), (runs, cold_summary) = await coldstart.bench_sides(model, work, cold_options, (1, 0))
        compared = await _compare_readers(model, args.device, dtype)
    summary: dict[str, Any] = {
        "model_size": built["size"],
        "model_parameters": built["parameters"],
        "model_bytes": built["bytes"],
        "dtype": dtype,
        "build_s": built["init_s"] + built["save_s"] if "init_s" in built else None,
        **batching_summary,
        "structured": structured_summary,
        "continuous": continuous_summary,
        **{k: v for k, v in cold_summary.items() if k not in batching_summary},
        "coldstart_with_standby": standby_summary,
        "h2d_gbps": compared.get("h2d_gbps"),
        "readers": compared,
        "errors": sum(
            part["errors"]
            for part in (batching_summary, structured_summary, continuous_summary, cold_summary, standby_summary)
        ),
        "elapsed_s": time.monotonic() - started,
    }
    model_table = Table("model", ["figure", "value"])
    for key in ("model_size", "model_parameters", "model_bytes", "dtype", "build_s", "elapsed_s"):
        model_table.add(key, summary[key])
    if args.out is not None:
        from loadtest.plots import plot_batching, plot_coldstart, plot_continuous

        plot_batching({f"batch size {s.batch_size}": s.tokens_per_s or 0.0 for s in sides}, args.out / "batching.png")
        plot_coldstart(coldstart_report.median_run_phases(runs), args.out / "coldstart.png")
        plot_continuous(continuous_summary["rates"], continuous.SCHEDULERS, args.out / "continuous.png")
        continuous.write_requests(measured, args.out / "continuous-requests.csv")
    tables = [
        model_table,
        batching.table(sides, batching_summary),
        *structured.tables(structured_sides, structured_summary),
        *continuous.tables(continuous_summary, continuous_options),
        *coldstart_report.tables(runs, cold_summary),
        coldstart_report.standby_table(cold_summary, standby_summary),
        *([readers.table(compared)] if "error" not in compared else []),
    ]
    finish(tables, summary, args.out)
    return 0


async def _compare_readers(model: Path, device: str, dtype: str) -> dict[str, Any]:
    """``loadtest.readers`` on the model's files; a failure there is reported, not fatal to the other results."""
    try:
        return await readers.compare_in_child(model, device, dtype, readers.DEFAULT_THREADS)
    except RuntimeError as exc:
        print(f"loadtest gpu: the weight readers' comparison failed: {exc}", file=sys.stderr)
        return {"error": str(exc)[-2000:]}
