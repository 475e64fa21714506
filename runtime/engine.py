"""The seam between the HTTP server and whatever produces tokens.

The server needs an engine that can be loaded, warmed up, and asked to run one batch at a time, yielding wire
events as they happen. ``TorchEngine`` runs a real model; ``EchoEngine`` answers instantly without torch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.settings import RuntimeSettings
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent

__all__ = ["BatchEvent", "Engine", "LoadReport", "create_engine", "too_long"]

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

    def generate(self, requests: Sequence[GenerationRequest], cancelled: threading.Event) -> Iterator[BatchEvent]:
        """Run ``requests`` together, yielding events in order: every request ends with exactly one
        ``FinishEvent`` or ``ErrorEvent``. Stops early, without further events, once ``cancelled`` is set."""
        ...


def create_engine(settings: RuntimeSettings, model_dir: Path | None) -> Engine:
    """The engine ``settings.engine`` names; ``model_dir`` is the cached model (unused by the echo engine)."""
    if settings.engine == "echo":
        from runtime.echo import EchoEngine

        return EchoEngine(max_context_tokens=settings.max_context_tokens)
    if model_dir is None:
        raise ValueError("the torch engine needs a model directory")
    from runtime.torch_engine import TorchEngine  # imports torch: only when a real model is served

    return TorchEngine(model_dir, settings)


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
