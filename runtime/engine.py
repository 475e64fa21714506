"""The seam between the HTTP server and whatever produces tokens.

The server needs an engine that can be loaded, warmed up, and asked to run one batch at a time, yielding wire
events as they happen. ``TorchEngine`` runs a real model; ``EchoEngine`` answers instantly without torch. Both
look at a ``Cancellation`` between decoding steps: the whole batch stops when its client leaves, and a single
request stops (the rest of the batch going on) when ``POST /v1/cancel`` names it.

Only the seam lives here, so both engines can import it without importing each other; ``runtime.engines``
picks and builds one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.cancellation import Cancellation
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent

__all__ = ["BatchEvent", "Engine", "LoadReport", "too_long"]

BatchEvent = TokenEvent | FinishEvent | ErrorEvent


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
