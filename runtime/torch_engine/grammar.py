"""Constrained decoding: a row whose output must follow a grammar gets a ``GrammarMask`` (its sampler's ``grammar``).

What must be followed comes from the request: ``response_format`` (one JSON value of a schema, or any JSON
object), and ``tool_choice`` ``required`` or a named tool (exactly the model family's tool-call markup around
arguments valid for the function's parameters, ``runtime.output.toolcalls``). With ``tool_choice`` ``auto`` and a
``response_format`` the answer is either. The grammar is written in llguidance's Lark dialect with JSON Schemas
embedded (``%json``); llguidance (chosen over xgrammar by measurement: docs/runtime.md, "Constrained decoding")
computes, at each step, the set of tokens that keep the output a prefix of some sentence of the grammar, and the
mask sets every other token's logit to ``-inf``. Once the grammar is complete only an end-of-sequence token is
allowed, so the row ends.

Compiling a grammar costs about a millisecond for a small schema (more for large ones), so ``Grammars`` keeps the
compiled start state of the last ``CACHE_SIZE`` grammars and each row gets a copy of it (about a microsecond).
``apply_masks`` masks every constrained row of a step at once: one call computes all their masks (llguidance's
thread pool, the GIL released), one tensor carries them to the device. Rows without a grammar never see any of
this (``runtime.torch_engine.sampling``: they keep their logits as they are).

Computing the next masks on a worker thread while the next forward pass runs was tried and measured: no gain on
CPU (``bench structured``: ratio 0.80-0.93 with it, 0.79-0.96 without), since the worker needs the GIL to start and
the forward pass's Python holds it; so the masks are computed when they are needed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

import numpy as np
import torch

from runtime.errors import PromptRejected
from runtime.output.toolcalls import ToolFormat, compact_json
from wire import ForcedTool, GenerationRequest, ResponseFormat

__all__ = ["CACHE_SIZE", "GrammarMask", "Grammars", "apply_masks", "grammar_text"]

log = logging.getLogger(__name__)

#: Compiled grammars kept (by their text): a workload that repeats a few schemas compiles each once.
CACHE_SIZE = 64


def grammar_text(request: GenerationRequest, tool_format: ToolFormat | None) -> str | None:
    """The Lark grammar ``request``'s output must follow, or None when it is free. Raises ``PromptRejected`` when
    tools must be called but the model has no tool-call format."""
    forced = request.tool_choice == "required" or isinstance(request.tool_choice, ForcedTool)
    may_call = request.calls_tools and tool_format is not None
    if forced and tool_format is None:
        raise PromptRejected("this model has no tool-call format, so it cannot be made to call a tool")
    rules, starts = [], []
    if forced or (may_call and request.response_format is not None):
        assert tool_format is not None
        tools = request.tools
        if isinstance(request.tool_choice, ForcedTool):
            tools = tuple(t for t in tools if t.function.name == request.tool_choice.name)
        rules.append(tool_format.grammar(tools, parallel=request.parallel_tool_calls))
        starts.append("calls")
    if request.response_format is not None and not forced:
        rules.append(f"answer: %json {compact_json(_answer_schema(request.response_format))}\n")
        starts.append("answer")
    if not starts:
        return None
    return f"start: {' | '.join(starts)}\n" + "".join(rules)


def _answer_schema(response_format: ResponseFormat) -> dict[str, Any]:
    return response_format.json_schema if response_format.json_schema is not None else {"type": "object"}


class Grammars:
    """Grammars for one model's tokenizer: compiled once per text (``CACHE_SIZE`` kept), a fresh mask per row."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Collection[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._lltokenizer: Any = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def mask(self, grammar: str) -> GrammarMask:
        """A mask in the grammar's start state. Raises ``PromptRejected`` for a grammar llguidance refuses (a JSON
        Schema it cannot enforce, say)."""
        return GrammarMask(self._start(grammar).deep_copy(), self._vocab_size, self._eos_ids)

    def _start(self, grammar: str) -> Any:
        import llguidance

        if (start := self._compiled.get(grammar)) is not None:
            self._compiled.move_to_end(grammar)
            return start
        start = llguidance.LLMatcher(self._llguidance_tokenizer(), grammar, log_level=0)
        if start.is_error():
            raise PromptRejected(f"the output cannot be constrained as asked: {start.get_error()}")
        self._compiled[grammar] = start
        if len(self._compiled) > CACHE_SIZE:
            self._compiled.popitem(last=False)
        return start

    def _llguidance_tokenizer(self) -> Any:
        """Made on first use: about 10 ms for the demo model's 1k tokens, 1 to 2 s for 128k."""
        if self._lltokenizer is None:
            import llguidance.hf

            try:
                self._lltokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self._vocab_size, eos_token=self._eos_ids
                )
            except ValueError as exc:  # not a fast tokenizer
                raise PromptRejected(f"this model's tokenizer cannot constrain its output: {exc}") from exc
        return self._lltokenizer


class GrammarMask:
    """One row's grammar state; as a ``runtime.torch_engine.sampling.LogitsProcessor``, tokens the grammar does not
    allow next get
    a logit of ``-inf`` (``apply_masks`` does the same for many rows at once)."""

    def __init__(self, matcher: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._eos_ids = eos_ids

    @property
    def words(self) -> int:
        return (self.vocab_size + 31) // 32

    @property
    def finished(self) -> bool:
        """The grammar is complete: only an end-of-sequence token is allowed."""
        return bool(self.matcher.is_stopped())

    def allowed(self) -> np.ndarray:
        """A boolean array over the vocabulary: which tokens may come next."""
        allowed: np.ndarray = _allowed([self])[0]
        return allowed

    def end_only(self, allowed: np.ndarray) -> None:
        """A matcher that failed (it logged why) can only end the row."""
        allowed[:] = False
        allowed[self._eos_ids] = True

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = torch.from_numpy(self.allowed()).to(logits.device, non_blocking=True)
        return logits.masked_fill(~allowed, float("-inf"))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            log.warning("the grammar did not accept token %d: %s", token, self.matcher.get_error())


def apply_masks(logits: torch.Tensor, rows: list[int], masks: list[GrammarMask]) -> None:
    """Mask ``logits`` (``[batch, vocab]``, changed in place) at ``rows``, row ``rows[n]`` by ``masks[n]``."""
    allowed = torch.from_numpy(_allowed(masks)).to(logits.device, non_blocking=True)
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def _allowed(masks: list[GrammarMask]) -> np.ndarray:
    """``[len(masks), vocab]`` booleans: the tokens each row's grammar allows next, computed in one call."""
    bitmask = np.empty((len(masks), masks[0].words), dtype=np.int32)
    _fill([mask.matcher for mask in masks], bitmask)
    allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, : masks[0].vocab_size].view(bool)
    for n, mask in enumerate(masks):
        if mask.matcher.is_error():
            mask.end_only(allowed[n])
    return allowed


def _fill(matchers: list[Any], bitmask: np.ndarray) -> None:
    """Each matcher's next-token bitmask into its row of ``bitmask``, in one call (llguidance's thread pool)."""
    pairs = [(matcher, row) for row, matcher in enumerate(matchers)]
    _llguidance_pool().unsafe_compute_mask_ptr(pairs, bitmask.ctypes.data, bitmask.shape[1] * 4, len(matchers))


_POOL: Any = None


def _llguidance_pool() -> Any:
    """llguidance's thread pool for computing many masks at once, made on first use (one per process)."""
    global _POOL  # noqa: PLW0603 - one pool for the process, like torch's own
    if _POOL is None:
        import llguidance

        _POOL = llguidance.LLExecutor()
    return _POOL
