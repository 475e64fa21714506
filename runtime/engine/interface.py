"""The seam between the HTTP server and whatever produces tokens.

The server needs an engine that can be loaded, warmed up, and asked to run one batch at a time, yielding wire
events as they happen (``Engine.generate``: the static scheduler). Both engines also let rows join and leave a
running batch between decoding steps (``StepEngine``: the continuous scheduler in ``runtime.scheduling.continuous``),
and
implement ``generate`` on top of that (``runtime.engine.stepping``), so there is one decoding loop per engine.
``TorchEngine``
runs a real model; ``EchoEngine`` answers instantly without torch. Both look at a ``Cancellation`` between decoding
steps: the whole batch stops when its client leaves, and a single request stops (the rest of the batch going on)
when ``POST /v1/cancel`` names it.

Only the seam lives here, so both engines can import it without importing each other; ``runtime.engine.factory``
picks and builds one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

from runtime.cancellation import Cancellation
from runtime.output.completion import Completion
from runtime.output.logprobs import Logprob
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent

__all__ = [
    "AdapterHolder",
    "BatchEvent",
    "Engine",
    "LoadReport",
    "NextToken",
    "ParkingEngine",
    "Reservation",
    "Row",
    "StepBatch",
    "StepEngine",
    "as_step_engine",
    "row_cost",
    "too_long",
]

BatchEvent = TokenEvent | FinishEvent | ErrorEvent
#: Whether a row may join a batch now (``StepBatch.reserve``): ``ready`` (what it needs beyond rows and tokens, a
#: LoRA adapter on the device, is held for it until it leaves), ``loading`` (its adapter is on its way: rows behind it
#: may pass), ``full`` (no room until running rows leave: it waits, and so do the rows behind it), or the error that
#: ends it.
Reservation = Literal["ready", "loading", "full"] | ErrorEvent


@dataclass(frozen=True)
class LoadReport:
    """What loading cost, for the start-up log line."""

    seconds: float
    bytes_loaded: int
    device: str
    dtype: str


class Engine(Protocol):
    @property
    def context_length(self) -> int:
        """Most prompt tokens plus ``max_tokens`` one request may ask for."""
        ...

    def load(self) -> LoadReport:
        """Load weights and tokenizer; blocking, called once from a worker thread."""
        ...

    def warmup(self) -> None:
        """Run one tiny generation so the first real batch does not pay for lazy set-up."""
        ...

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        """Run ``requests`` together, yielding events in order: every request ends with exactly one
        ``FinishEvent`` or ``ErrorEvent``. Between decoding steps: once ``cancellation.batch`` is set, stop
        without further events; a request for which ``cancellation.request(id)`` holds gets ``cancelled_event``
        instead of its next token and takes no further compute, while the others go on."""
        ...


class ParkingEngine(Engine, Protocol):
    """An engine whose weights can leave the device and come back (a pool runtime's models, ``runtime.pool``).
    Parked, it keeps everything else (tokenizer, compiled grammars, token tables); it must not run until woken.
    Both calls block; the pool makes them on its own thread while no batch of this engine runs."""

    def weight_bytes(self) -> int:
        """Bytes its weights take on the device: measured once loaded, estimated from the checkpoint before."""
        ...

    def device_memory_bytes(self) -> int:
        """All the memory of its device (a GPU's total; on CPU, the RAM): what a pool's default budget halves."""
        ...

    def park(self) -> int:
        """Copy the weights into a separate host copy (pinned on a GPU) and give their device memory back;
        return the bytes moved."""
        ...

    def wake(self) -> int:
        """Copy the parked weights back onto the device and drop the host copy; return the bytes moved."""
        ...


@runtime_checkable
class AdapterHolder(Protocol):
    """An engine that serves LoRA adapters on its base model."""

    def loaded_adapters(self) -> tuple[str, ...]:
        """The adapters on the device now, least recently used first; safe to call from any thread."""
        ...


class Row(Protocol):
    """One request as a step engine holds it: its ``Completion`` plus whatever the engine needs (prompt ids, a
    sampler). The scheduler treats rows as opaque tokens of identity and reads only the completion."""

    @property
    def completion(self) -> Completion: ...


RowT = TypeVar("RowT", bound=Row)


class NextToken(NamedTuple, Generic[RowT]):
    """One row's new token from a step, whether it ends the sequence (an end-of-sequence token), and its scores
    (for a row that asked for ``logprobs``)."""

    row: RowT
    token: int
    end_of_sequence: bool
    logprob: Logprob | None = None

    def push(self) -> list[TokenEvent | FinishEvent]:
        """Hand the token to its row's ``Completion``: the events it causes."""
        return self.row.completion.push(self.token, end_of_sequence=self.end_of_sequence, logprob=self.logprob)


class StepBatch(Protocol[RowT]):
    """A batch that rows join and leave between decoding steps. Single-threaded: only the generation thread uses it.

    ``join`` takes rows in (a torch engine prefills them over the next steps, in chunks); ``step`` runs one
    decoding step for the rows that are in, plus one prefill chunk for those joining, and returns a token for
    every row that got one; ``leave`` drops rows (finished, cancelled) and frees what they held. A row that got a
    token from ``step`` and does not leave gets its next token from the next ``step``."""

    @property
    def size(self) -> int:
        """Rows held: decoding or joining."""
        ...

    @property
    def joining(self) -> bool:
        """Rows that joined are still being prefilled; the scheduler lets more rows join only once they are in."""
        ...

    @property
    def cache_tokens(self) -> int:
        """KV-cache token slots held now, padding included (0 for an engine without a cache)."""
        ...

    def reserve(self, row: RowT, wake: Callable[[], None]) -> Reservation:
        """Before ``join``: take what ``row`` needs beyond rows and tokens (its LoRA adapter's slot on the device),
        held until it leaves; or say why it must wait (after ``loading``, ``wake`` is called from another thread once
        that load ends), or end it with an error."""
        ...

    def join(self, rows: Sequence[RowT]) -> None: ...

    def leave(self, rows: Collection[RowT]) -> None:
        """Drop ``rows`` (joined, or reserved and not yet joined) and release what they hold."""
        ...

    def step(self) -> list[NextToken[RowT]]: ...


class StepEngine(Engine, Protocol[RowT]):
    """An engine whose batches rows can join and leave between decoding steps (the continuous scheduler's)."""

    def prepare(self, request: GenerationRequest) -> RowT | ErrorEvent:
        """Tokenize and check one request: its row, or the ``invalid_request`` error that ends it."""
        ...

    def step_batch(self, *, running_joins: bool = True) -> StepBatch[RowT]:
        """A new, empty batch. With ``running_joins`` rows may join it while others run; that raises
        ``EngineError`` if this engine (this model's cache) cannot do it. Without, rows join only while it is
        empty, which every model supports (``Engine.generate``)."""
        ...

    def default_batch_tokens(self) -> int:
        """The KV-cache token budget to use when ``--max-batch-tokens`` is not set."""
        ...


def as_step_engine(engine: Engine) -> StepEngine[Any] | None:
    """``engine`` if it can run under the continuous scheduler (both shipped engines can; test doubles that only
    ``generate`` cannot), else None."""
    needed = ("prepare", "step_batch", "default_batch_tokens")
    if all(callable(getattr(engine, name, None)) for name in needed):
        return cast("StepEngine[Any]", engine)
    return None


def row_cost(completion: Completion) -> int:
    """The KV-cache tokens a row may come to hold: its prompt plus every token it may generate."""
    return completion.prompt_tokens + completion.request.params.max_tokens


def too_long(request: GenerationRequest, prompt_tokens: int, context_length: int) -> ErrorEvent | None:
    """The ``invalid_request`` error for a request that cannot fit the context, or None if it fits."""
    needed = prompt_tokens + request.params.max_tokens
    if needed <= context_length:
        return None
    return ErrorEvent(
        id=request.id,
        code="invalid_request",
        message=(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({request.params.max_tokens}) is {needed} tokens, "
            f"more than this model's context of {context_length}"
        ),
    )
