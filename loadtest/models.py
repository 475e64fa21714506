"""Models for the benchmarks, built locally with random weights (nothing is downloaded).

- The tiny demo Llama of ``runtime.weights.demo_model`` (``make demo-model`` puts one in ``.demo-model``).
- ``random_llama``: a Llama of a given size with random weights, saved as safetensors with the demo model's
  tokenizer. Built on the GPU when there is one: random init of 1B parameters there takes well under a second.
  The output rows of special tokens are zeroed (as in the demo model) so random text never stops early and every
  request generates exactly ``max_tokens``.

Building imports torch, so it runs in a child process: ``python -m loadtest.models --size 1b --out DIR``. The
load test itself never imports torch (and never holds GPU memory a runtime needs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.processes import die_with_parent

__all__ = ["SIZES", "build_in_child", "demo_model", "main", "python_child", "random_llama", "sized_model"]

#: Llama shapes. "1b" is Llama-3.2-1B's body (16 layers, hidden 2048, GQA 32/8) with the demo tokenizer's small
#: vocabulary, about 0.98 B parameters, 1.96 GB in bfloat16. "140m" (12 layers, hidden 1024, GQA 16/4) is 0.14 B
#: parameters, 0.56 GB in float32: big enough on a CPU that a cold start's weight load measures bandwidth, not
#: fixed cost (``bench coldstart --model-size 140m``).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512},
    "140m": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 12, "num_attention_heads": 16,
             "num_key_value_heads": 4, "max_position_embeddings": 2048},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": 2048},
}  # fmt: skip
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_DEMO_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _DEMO_REQUIRED)


async def python_child(*args: str) -> str:
    """``python ARGS`` to the end, from the project root; its output (stdout and stderr). Killed if we are
    cancelled (or die) first; raises ``RuntimeError`` with the output's tail if it fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=_PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        output, _ = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed:\n{output.decode(errors='replace')[-3000:]}")
    return output.decode(errors="replace")


async def demo_model(given: Path | None, scratch: Path) -> Path:
    """``given``, else ``.demo-model`` if ``make demo-model`` built one, else a fresh demo model in ``scratch``."""
    if given is not None:
        return given
    made = _PROJECT_ROOT / ".demo-model"
    if _complete(made):
        return made
    target = scratch / "demo-model"
    if not _complete(target):
        await python_child("-m", "runtime.weights.demo_model", "--out", str(target))
    return target


async def sized_model(size: str, scratch: Path, bench: str) -> Path:
    """A random Llama of ``size`` in ``scratch``, built on the CPU unless a finished build is there."""
    model = scratch / f"llama-{size}"
    if not (model / "build.json").is_file():  # written last: a model without it is a build that did not finish
        print(f"{bench}: building a random {size} Llama on the CPU", file=sys.stderr)
        await build_in_child(size, model, "cpu")
    return model


async def build_in_child(size: str, out: Path, device: str, tokenizer_from: Path | None = None) -> dict[str, Any]:
    """``random_llama`` in a child process; returns what it wrote to ``out/build.json``."""
    args = ["-m", "loadtest.models", "--size", size, "--out", str(out), "--device", device]
    if tokenizer_from is not None:
        args += ["--tokenizer-from", str(tokenizer_from)]
    await python_child(*args)
    report: dict[str, Any] = json.loads((out / "build.json").read_text())
    return report


def random_llama(size: str, out: Path, device: str, tokenizer_from: Path | None = None) -> dict[str, Any]:
    """Build and save a random-weight Llama of ``size``; returns parameters, bytes and seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    if tokenizer_from is None:
        from runtime.weights.demo_model import build

        tokenizer_from = build(out.parent / f".{out.name}-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    shape: dict[str, Any] = dict(SIZES[size])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        model.lm_head.weight[list(tokenizer.all_special_ids)] = 0.0
    built = time.monotonic()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {
        "size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "bytes": sum(p.stat().st_size for p in out.glob("*.safetensors")),
        "init_s": built - started,
        "save_s": time.monotonic() - built,
        "device": device,
    }
    (out / "build.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.models", description="Build a random-weight Llama.")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="where to run the random init (cuda or cpu)")
    parser.add_argument("--tokenizer-from", type=Path, help="a model directory whose tokenizer to use")
    args = parser.parse_args(argv)
    report = random_llama(args.size, args.out, args.device, args.tokenizer_from)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
