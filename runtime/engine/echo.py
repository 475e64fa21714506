"""An engine that answers instantly with the prompt's own words: the gateway's overhead, measured without a model.

Each whitespace-separated word of the prompt (or of all chat messages; a token id of a token prompt) counts as one
token, both in the prompt and in the answer, with log-probability 0 where log-probabilities are asked for. The
answer repeats the words in order; it ends with ``length`` at ``max_tokens`` or with ``stop`` (like an
end-of-sequence token) when the words run out. Stop sequences and streaming behave exactly as
in the torch engine, because both use ``Completion``, and so does cancellation: a cancelled request gets its
``cancelled`` error at the next step. Rows join and leave a running batch between steps as in the torch engine, so
the continuous scheduler (several open batches at once) works with it too. It never imports torch, so it is
ready in well under a second.

A request with a LoRA adapter is echoed like any other, and the adapter counts as loaded from its first request on
(least recently used ones forgotten beyond ``max_adapters``, never one a running row uses), without reading its
files: ``/readyz`` and the adapters header of the batch answers then behave as a torch runtime's would, for the
gateway's tests.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

from runtime.adapters.residency import Residency
from runtime.cancellation import Cancellation
from runtime.engine.interface import BatchEvent, LoadReport, NextToken, Reservation, too_long
from runtime.engine.stepping import run_to_completion
from runtime.output.completion import Completion, Decode, EchoedPrompt
from runtime.output.logprobs import Logprob, Vocabulary
from wire import ErrorEvent, GenerationRequest

__all__ = ["DEFAULT_BATCH_TOKENS", "EchoEngine"]

DEFAULT_CONTEXT_TOKENS = 32768
#: The echo engine keeps no cache; its token budget only bounds how much work the scheduler takes in.
DEFAULT_BATCH_TOKENS = 16 * DEFAULT_CONTEXT_TOKENS


@dataclass(eq=False)
class EchoRow:
    completion: Completion
    words: list[str]
    produced: int = 0


class EchoEngine:
    def __init__(self, max_context_tokens: int | None = None, max_adapters: int = 8) -> None:
        self._context_length = max_context_tokens or DEFAULT_CONTEXT_TOKENS
        self._adapters = Residency(max_adapters)

    def loaded_adapters(self) -> tuple[str, ...]:
        return self._adapters.names

    @property
    def context_length(self) -> int:
        return self._context_length

    def load(self) -> LoadReport:
        return LoadReport(seconds=0.0, bytes_loaded=0, device="none", dtype="none")

    def warmup(self) -> None:
        return None

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        return run_to_completion(self, requests, cancellation)

    def prepare(self, request: GenerationRequest) -> EchoRow | ErrorEvent:
        if request.tools or request.response_format is not None:
            message = "the echo engine neither calls tools nor constrains its output"
            return ErrorEvent(id=request.id, code="invalid_request", message=message)
        words = _words(request)
        if error := too_long(request, len(words), self._context_length):
            return error
        vocabulary = Vocabulary(lambda i: (" " * (i > 0) + words[i]).encode())
        echo = None
        if request.echo:
            scores = [Logprob(None), *(Logprob(0.0) for _ in words[1:])]
            logprobs = vocabulary.entries(range(len(words)), scores) if request.params.logprobs is not None else ()
            echo = EchoedPrompt(request.prompt if request.prompt is not None else " ".join(words), logprobs)
        completion = Completion(request, len(words), _decoder(words), vocabulary=vocabulary, echo=echo)
        return EchoRow(completion, words)

    def step_batch(self, *, running_joins: bool = True) -> EchoBatch:
        return EchoBatch(self._adapters)

    def default_batch_tokens(self) -> int:
        return DEFAULT_BATCH_TOKENS


class EchoBatch:
    """Every row gets the index of its next word per step; the end of the words is its end of sequence."""

    def __init__(self, adapters: Residency | None = None) -> None:
        self._rows: list[EchoRow] = []
        self._adapters = adapters if adapters is not None else Residency(0)
        self._pinned: dict[int, tuple[str, str]] = {}  # id(row) -> its adapter, from reserve until it leaves

    @property
    def size(self) -> int:
        return len(self._rows)

    @property
    def joining(self) -> bool:
        return False

    @property
    def cache_tokens(self) -> int:
        return 0

    def reserve(self, row: EchoRow, wake: Callable[[], None]) -> Reservation:
        ref = row.completion.request.adapter
        if ref is None:
            return "ready"
        key = (ref.name, ref.source)
        if key not in self._adapters:
            evict = self._adapters.room_for(0)
            if evict is None:
                return "full" if self._adapters.max_adapters else _no_adapters(row)
            for old in evict:
                self._adapters.evict(old)
            self._adapters.add(key, ref.name, 0)
        self._adapters.pin(key)
        self._pinned[id(row)] = key
        return "ready"

    def join(self, rows: Sequence[EchoRow]) -> None:
        self._rows.extend(rows)

    def leave(self, rows: Collection[EchoRow]) -> None:
        for row in rows:
            if (key := self._pinned.pop(id(row), None)) is not None:
                self._adapters.unpin(key)
        gone = set(map(id, rows))
        self._rows = [row for row in self._rows if id(row) not in gone]

    def step(self) -> list[NextToken[EchoRow]]:
        tokens = [NextToken(row, row.produced, row.produced >= len(row.words), _certain(row)) for row in self._rows]
        for row in self._rows:
            row.produced += 1
        return tokens


def _no_adapters(row: EchoRow) -> ErrorEvent:
    return ErrorEvent(id=row.completion.request.id, code="adapter_invalid", message="this runtime serves no adapters")


def _certain(row: EchoRow) -> Logprob | None:
    """Every echoed word is certain: log-probability 0, for a request that asked for them."""
    return Logprob(0.0) if row.completion.wants_logprobs else None


def _words(request: GenerationRequest) -> list[str]:
    if request.prompt is not None:
        return request.prompt.split()
    if request.prompt_token_ids is not None:
        return [str(token) for token in request.prompt_token_ids]
    return [word for message in request.messages or () for word in (message.content or "").split()]


def _decoder(words: list[str]) -> Decode:
    def decode(ids: Sequence[int]) -> str:
        return " ".join(words[i] for i in ids)

    return decode
