"""Weight readers side by side, on the same safetensors files: ours (``runtime.weights.reader``), safetensors'
``load_file``, and ``fastsafetensors`` and ``runai-model-streamer`` where they are installed (the ``fastload``
extra); next to them the machine's raw read and, on CUDA, host-to-device bandwidth.

Each reader runs with the page cache evicted first (``posix_fadvise(DONTNEED)``), loads every tensor onto the
device and is timed to the last byte there (``torch.cuda.synchronize``); its tensors are then compared with ours
(``same`` is false if any differs) and freed. All of them run twice and the second round is reported, so that no
reader pays for another's (or its own) one-time set-up. A reader that fails reports its error instead of a time.

It imports torch, so ``python -m loadtest gpu`` runs it in a child process (``compare_in_child``):
``python -m loadtest.readers --model DIR --device cuda --dtype bfloat16`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.models import python_child
from loadtest.pagecache import evict, raw_read
from loadtest.report import Table

__all__ = ["DEFAULT_THREADS", "READERS", "compare", "compare_in_child", "main", "table"]

#: Bytes of the pinned host-to-device copy: a few hundred MB, like the chunks a loader moves.
_H2D_BYTES = 256 << 20
_H2D_REPEATS = 5
#: Rounds over all readers; the last one is reported.
_ROUNDS = 2
#: Our reader's threads: the runtime's ``--weight-read-threads`` default.
DEFAULT_THREADS = 4

Tensors = dict[str, Any]
Reader = Callable[[Sequence[Path], Any, Any, int], Tensors]


def _ours(files: Sequence[Path], dtype: Any, device: Any, threads: int) -> Tensors:
    from runtime.weights.reader import read_checkpoint

    return read_checkpoint(files, dtype, device, threads)


def _load_file(files: Sequence[Path], dtype: Any, device: Any, threads: int) -> Tensors:
    from safetensors.torch import load_file

    return {name: t for path in files for name, t in load_file(path, device=str(device)).items()}


def _fastsafetensors(files: Sequence[Path], dtype: Any, device: Any, threads: int) -> Tensors:
    from fastsafetensors import fastsafe_open

    def load(nogds: bool) -> Tensors:
        with fastsafe_open([str(path) for path in files], device=str(device), nogds=nogds) as opened:
            return {name: opened.get_tensor(name) for name in opened.keys()}  # noqa: SIM118 (not a dict)

    try:  # GPUDirect Storage where the machine has it
        return load(nogds=device.type != "cuda")
    except Exception:  # no cuFile here: its own pread into a bounce buffer, which is what nogds is for
        return load(nogds=True)


def _runai(files: Sequence[Path], dtype: Any, device: Any, threads: int) -> Tensors:
    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as streamer:  # streams to host memory; the device copy is ours, as in vLLM
        streamer.stream_files([str(path) for path in files], device="cpu")
        return {name: t.to(device) for name, t in streamer.get_tensors()}


READERS: dict[str, Reader] = {
    "ours": _ours,
    "safetensors": _load_file,
    "fastsafetensors": _fastsafetensors,
    "runai": _runai,
}


def compare(model: Path, device_name: str, dtype_name: str, threads: int) -> dict[str, Any]:
    """Every reader on ``model``'s safetensors files, plus raw read and host-to-device bandwidth."""
    import torch

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    files = sorted(model.glob("*.safetensors"))
    size = sum(path.stat().st_size for path in files)
    evict(files)
    raw_bytes, raw_s = raw_read(files)
    result: dict[str, Any] = {
        "bytes": size,
        "raw_read_gbps": raw_bytes / raw_s / 1e9,
        "h2d_gbps": _h2d_gbps(device) if device.type == "cuda" else None,
        "read_threads": threads,
    }
    for _ in range(_ROUNDS):  # the last round counts: the first pays for each library's lazy set-up
        reference: Tensors = {}
        for name, reader in READERS.items():
            outcome, tensors = _timed(reader, files, dtype, device, threads, size)
            if name == "ours":
                reference = tensors
            elif tensors:
                outcome["same"] = _same(tensors, reference, dtype)
            result[name] = outcome
            del tensors
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return result


def _timed(
    reader: Reader, files: Sequence[Path], dtype: Any, device: Any, threads: int, size: int
) -> tuple[dict[str, Any], Tensors]:
    import torch

    evict(files)
    started = time.perf_counter()
    try:
        tensors = reader(files, dtype, device, threads)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except ImportError:
        return {"error": "not installed"}, {}
    except Exception as exc:  # a comparison: report what went wrong and go on with the next reader
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}, {}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "gbps": size / seconds / 1e9}, tensors


def _same(tensors: Tensors, reference: Tensors, dtype: Any) -> bool:
    if tensors.keys() != reference.keys():
        return False
    for name, ours in reference.items():
        theirs = tensors[name]
        if theirs.is_floating_point() and theirs.dtype != dtype:
            theirs = theirs.to(dtype)
        if theirs.device != ours.device or not bool((theirs == ours).all()):
            return False
    return True


def _h2d_gbps(device: Any) -> float:
    """Median bandwidth of copying ``_H2D_BYTES`` from pinned host memory to ``device``."""
    import torch

    host = torch.empty(_H2D_BYTES, dtype=torch.uint8, pin_memory=True)
    target = torch.empty(_H2D_BYTES, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)  # the first copy pays for lazy set-up
    torch.cuda.synchronize(device)
    seconds = []
    for _ in range(_H2D_REPEATS):
        started = time.perf_counter()
        target.copy_(host, non_blocking=True)
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return _H2D_BYTES / statistics.median(seconds) / 1e9


def table(result: dict[str, Any]) -> Table:
    """The comparison as one table: bandwidths first, then each reader."""
    readers = Table(f"weight readers, same files ({result['bytes']:,} bytes, page cache evicted)", ["what", "GB/s"])
    readers.add("raw read (16 MiB reads, one thread)", result["raw_read_gbps"])
    if result["h2d_gbps"] is not None:
        readers.add("host to device (pinned, 256 MiB)", result["h2d_gbps"])
    for name in READERS:
        outcome = result[name]
        label = f"{name} ({result['read_threads']} threads)" if name == "ours" else name
        if "error" in outcome:
            readers.add(label, outcome["error"])
        else:
            readers.add(label + ("" if outcome.get("same", True) else " (tensors differ!)"), outcome["gbps"])
    return readers


async def compare_in_child(model: Path, device: str, dtype: str, threads: int) -> dict[str, Any]:
    """``compare`` in a child process, so that this one never imports torch nor holds device memory."""
    output = await python_child(
        "-m", "loadtest.readers", "--model", str(model), "--device", device, "--dtype", dtype,
        "--threads", str(threads),
    )  # fmt: skip
    last = [line for line in output.splitlines() if line.startswith("{")][-1]  # stderr is mixed in
    found: dict[str, Any] = json.loads(last)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.readers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a directory of safetensors files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="our reader's threads")
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.model, args.device, args.dtype, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
