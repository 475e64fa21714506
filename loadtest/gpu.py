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
``fastload`` extra is installed), with the machine's raw read and pinned host-to-device bandwidth; last, where vLLM
is installed on that machine (nothing is installed here: it has no network), ``bench upstream`` with vLLM serving
the same model as an ``openai`` model's replica, directly and through a local gateway (skipped otherwise, and said
so). Prints all tables and one JSON object with the keys of the benchmarks plus the model's size, ``h2d_gbps``, the
comparison under ``readers`` and ``bench upstream``'s summary (or why it was skipped) under ``upstream``.

``--device cpu --size tiny`` runs the same steps on a CPU with a tiny model, to check the script without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import batching, coldstart, coldstart_report, continuous, readers, structured, upstream, upstream_report
from loadtest.children import StartError, scratch_dir
from loadtest.models import SIZES, build_in_child
from loadtest.report import Table, finish

__all__ = ["GPU_RATES", "VLLM_SERVE", "add_arguments", "bench_vllm", "cuda_available", "run"]

#: ``bench continuous`` on the GPU: a 1B model's decoding step takes some 10 to 30 ms there, so a static replica
#: (whose batches last as long as their longest request) should fall behind at the highest rate, a continuous one
#: not (an estimate, like the run time above).
GPU_RATES = (4.0, 8.0, 16.0)


#: ``bench upstream``'s server on the GPU: vLLM's OpenAI-compatible server from this interpreter's environment, the
#: model under the name ``{model}``, bfloat16, leaving GPU memory for nothing else (the runtimes have stopped by then).
VLLM_SERVE = (
    sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "{source}", "--served-model-name",
    "{model}", "--host", "{host}", "--port", "{port}", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.8",
)  # fmt: skip
#: ``bench upstream`` with vLLM: its figures, sized to take a minute or two once vLLM is up.
VLLM_OPTIONS = upstream.UpstreamOptions(
    concurrency=8, requests=64, streams=8, rounds=2, max_tokens=64, server_command=VLLM_SERVE, upstream_model="llama"
)


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
        served, upstream_summary = await bench_vllm(model, work, args.device)
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
        "upstream": upstream_summary,
        "errors": sum(
            part["errors"]
            for part in (batching_summary, structured_summary, continuous_summary, cold_summary, standby_summary)
        )
        + upstream_summary.get("errors", 0),
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
        *(upstream_report.tables(served, upstream_summary) if served else []),
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


async def bench_vllm(model: Path, work: Path, device: str) -> tuple[list[upstream_report.Side], dict[str, Any]]:
    """``bench upstream`` with vLLM as the server, where vLLM is installed and there is a GPU; else nothing is
    started and the summary says why (``skipped``). A server that does not start is reported, not fatal."""
    if importlib.util.find_spec("vllm") is None:
        print("loadtest gpu: bench upstream skipped: vllm not installed", file=sys.stderr)
        return [], {"skipped": "vllm not installed"}
    if device != "cuda":
        print("loadtest gpu: bench upstream skipped: vLLM needs --device cuda here", file=sys.stderr)
        return [], {"skipped": "not on cuda"}
    print("loadtest gpu: bench upstream with vLLM", file=sys.stderr)
    try:
        return await upstream.bench(upstream.source_of(model), work / "upstream", VLLM_OPTIONS)
    except StartError as exc:
        print(f"loadtest gpu: vLLM did not serve: {exc}", file=sys.stderr)
        return [], {"error": str(exc)[-2000:], "errors": 1}
