"""The per-step cost of a grammar's token mask at batch 16, per library, on one tokenizer: what chose llguidance.

For each library that is importable (llguidance, which the runtime uses; xgrammar, if installed beside it) and the
same JSON Schema: the time to compile it, then per decoding step for ``--batch`` rows at once: filling every row's
bitmask (the library's batch call), applying the masks to ``[batch, vocab]`` logits (the same for both: the bitmask
format is the same), and each row accepting its token. Logits are random (seeded), so the rows walk different paths
through the grammar; a row whose answer is complete starts again. Medians over ``--steps`` steps.

Imports torch, so the benchmarks run it in a child process (``measure_in_child``):
``python -m loadtest.masks --tokenizer DIR``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["SCHEMA", "main", "measure_in_child"]

#: A typical structured-output schema: strings, an integer range, an enum, an array, a nested object.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 6},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "unit", "tags", "address"],
    "additionalProperties": False,
}


class _Library(Protocol):
    """One library's calls, behind the same verbs."""

    name: str

    def prepare(self, tokenizer: Any, vocab: int) -> None: ...
    def compile(self) -> None: ...
    def matcher(self) -> Any: ...
    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None: ...
    def accept(self, matcher: Any, token: int) -> bool: ...


class _Llguidance:
    def __init__(self) -> None:
        import llguidance

        self.name = f"llguidance {llguidance.__version__}"
        self._executor = llguidance.LLExecutor()

    def prepare(self, tokenizer: Any, vocab: int) -> None:
        import llguidance.hf

        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)

    def compile(self) -> None:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
        self._start = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)

    def matcher(self) -> Any:
        return self._start.deep_copy()

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token)) and not matcher.is_stopped()


class _Xgrammar:
    def __init__(self) -> None:
        import xgrammar

        self.name = f"xgrammar {getattr(xgrammar, '__version__', '')}".strip()
        self._batch = xgrammar.BatchGrammarMatcher()

    def prepare(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self) -> None:
        self._compiled = self._compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)

    def matcher(self) -> Any:
        import xgrammar

        return xgrammar.GrammarMatcher(self._compiled)

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        self._batch.batch_fill_next_token_bitmask(list(matchers), bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token)) and not matcher.is_terminated()


def _libraries() -> list[_Library]:
    found: list[_Library] = []
    makers: tuple[type[_Library], ...] = (_Llguidance, _Xgrammar)
    for make in makers:
        try:
            found.append(make())
        except ImportError:
            continue
    return found


def _measure(library: _Library, tokenizer: Any, batch: int, steps: int) -> dict[str, Any]:
    import torch

    vocab = len(tokenizer)
    prepare_s = _timed(lambda: library.prepare(tokenizer, vocab))
    compile_s = _timed(library.compile)
    generator = torch.Generator().manual_seed(0)
    matchers = [library.matcher() for _ in range(batch)]
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    timings = [
        _step(library, matchers, bitmask, torch.randn(batch, vocab, generator=generator) * 5) for _ in range(steps)
    ]
    fill, apply, accept = (_median_ms([t[i] for t in timings]) for i in range(3))
    return {
        "library": library.name,
        "vocab": vocab,
        "batch": batch,
        "tokenizer_ms": prepare_s * 1e3,
        "compile_ms": compile_s * 1e3,
        "fill_ms": fill,
        "apply_ms": apply,
        "accept_ms": accept,
        "step_ms": _median_ms([sum(t) for t in timings]),
    }


def _step(library: _Library, matchers: list[Any], bitmask: Any, logits: Any) -> tuple[float, float, float]:
    """One decoding step's grammar work: (fill, apply, accept) seconds."""
    import torch

    started = time.perf_counter()
    library.fill(matchers, bitmask)
    filled = time.perf_counter()
    allowed = ((bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).bool().flatten(1)
    logits.masked_fill_(~allowed[:, : logits.shape[1]], float("-inf"))
    tokens = logits.argmax(dim=-1).tolist()
    applied = time.perf_counter()
    for row, token in enumerate(tokens):
        if not library.accept(matchers[row], token):
            matchers[row] = library.matcher()
    return filled - started, applied - filled, time.perf_counter() - applied


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1e3


async def measure_in_child(tokenizer_dir: Path, batch: int = 16, steps: int = 200) -> list[dict[str, Any]]:
    """``main`` in a child process (it imports torch); its rows, one per library."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.masks", "--tokenizer", str(tokenizer_dir), "--batch", str(batch),
        "--steps", str(steps), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"python -m loadtest.masks failed:\n{errors.decode(errors='replace')[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(output.decode().strip().splitlines()[-1])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.masks", description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a directory with a Hugging Face tokenizer")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = [_measure(library, tokenizer, args.batch, args.steps) for library in _libraries()]
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
