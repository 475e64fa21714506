"""The per-step cost of a grammar's token mask at batch 16, per library, on one tokenizer: what chose llguidance.

For each library that is importable (llguidance, which the runtime uses; xgrammar, if installed beside it) and the
same JSON Schema: the time to compile it, then per decoding step for ``--batch`` rows at once: filling every row's
bitmask (the library's batch call), applying the masks to ``[batch, vocab]`` logits (the same for both: the bitmask
format is the same), and each row accepting its token. Logits are random (seeded), so the rows walk different paths
through the grammar; a row whose answer is complete starts again. Medians over ``--steps`` steps.

Then, per schema of ``SCHEMAS`` (flat object, nested object, array of enums, a tool call), for llguidance: the
**cold** compile (the first compile of that schema in the process, nothing cached) and the same per-step figures
(``schemas``). ``--threads N`` caps llguidance's pool and torch's threads at N (0: their defaults).

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

__all__ = ["SCHEMA", "SCHEMAS", "main", "measure_in_child"]

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

#: Schemas of different shapes, each compiled cold and measured per step (``schemas`` in each row).
SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string", "maxLength": 60},
            "done": {"type": "boolean"},
            "score": {"type": "number"},
        },
        "required": ["id", "title", "done", "score"],
        "additionalProperties": False,
    },
    "nested": SCHEMA,
    "enum_array": {
        "type": "array",
        "items": {"enum": ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white"]},
        "minItems": 1,
        "maxItems": 20,
    },
    "tool_call": {
        "type": "object",
        "properties": {
            "name": {"enum": ["get_weather", "search_web", "send_email"]},
            "arguments": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "maxLength": 40},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                    "query": {"type": "string", "maxLength": 80},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                },
                "required": ["location"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    },
}


class _Library(Protocol):
    """One library's calls, behind the same verbs."""

    name: str

    def prepare(self, tokenizer: Any, vocab: int) -> None: ...
    def compile(self, schema: dict[str, Any]) -> None: ...
    def matcher(self) -> Any: ...
    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None: ...
    def accept(self, matcher: Any, token: int) -> bool: ...


class _Llguidance:
    def __init__(self, threads: int | None = None) -> None:
        import llguidance

        self.name = f"llguidance {llguidance.__version__}"
        self._executor = llguidance.LLExecutor(num_threads=threads)

    def prepare(self, tokenizer: Any, vocab: int) -> None:
        import llguidance.hf

        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)

    def compile(self, schema: dict[str, Any]) -> None:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        self._start = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)

    def matcher(self) -> Any:
        return self._start.deep_copy()

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.consume_token(token)) and not matcher.is_stopped()


class _Xgrammar:
    def __init__(self, threads: int | None = None) -> None:
        import xgrammar

        self.name = f"xgrammar {getattr(xgrammar, '__version__', '')}".strip()
        self._batch = xgrammar.BatchGrammarMatcher()

    def prepare(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> None:
        self._compiled = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def matcher(self) -> Any:
        import xgrammar

        return xgrammar.GrammarMatcher(self._compiled)

    def fill(self, matchers: Sequence[Any], bitmask: Any) -> None:
        self._batch.batch_fill_next_token_bitmask(list(matchers), bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token)) and not matcher.is_terminated()


def _libraries(threads: int | None) -> list[_Library]:
    found: list[_Library] = []
    makers: tuple[Callable[[int | None], _Library], ...] = (_Llguidance, _Xgrammar)
    for make in makers:
        try:
            found.append(make(threads))
        except ImportError:
            continue
    return found


def _measure(library: _Library, tokenizer: Any, batch: int, steps: int, schemas: bool) -> dict[str, Any]:
    vocab = len(tokenizer)
    prepare_s = _timed(lambda: library.prepare(tokenizer, vocab))
    row = {"library": library.name, "vocab": vocab, "batch": batch, "tokenizer_ms": prepare_s * 1e3}
    row |= _schema_costs(library, SCHEMA, vocab, batch, steps)
    if schemas:
        row["schemas"] = {name: _schema_costs(library, schema, vocab, batch, steps) for name, schema in SCHEMAS.items()}
    return row


def _schema_costs(library: _Library, schema: dict[str, Any], vocab: int, batch: int, steps: int) -> dict[str, float]:
    """One schema: its compile (cold: llguidance and xgrammar's compiler here cache nothing), then the medians of
    ``steps`` decoding steps' mask work for ``batch`` rows."""
    import torch

    compile_s = _timed(lambda: library.compile(schema))
    generator = torch.Generator().manual_seed(0)
    matchers = [library.matcher() for _ in range(batch)]
    bitmask = torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    timings = [
        _step(library, matchers, bitmask, torch.randn(batch, vocab, generator=generator) * 5) for _ in range(steps)
    ]
    fill, apply, accept = (_median_ms([t[i] for t in timings]) for i in range(3))
    return {
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


async def measure_in_child(
    tokenizer_dir: Path, batch: int = 16, steps: int = 200, threads: int | None = None
) -> list[dict[str, Any]]:
    """``main`` in a child process (it imports torch); its rows, one per library."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.masks", "--tokenizer", str(tokenizer_dir), "--batch", str(batch),
        "--steps", str(steps), "--threads", str(threads or 0),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
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
    parser.add_argument("--threads", type=int, default=0, help="llguidance's and torch's threads (0: defaults)")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    libraries = _libraries(args.threads or None)
    rows = [_measure(library, tokenizer, args.batch, args.steps, library is libraries[0]) for library in libraries]
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
