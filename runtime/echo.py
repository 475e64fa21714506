"""An engine that answers instantly with the prompt's own words: the gateway's overhead, measured without a model.

Each whitespace-separated word of the prompt (or of all chat messages) counts as one token, both in the prompt
and in the answer. The answer repeats the words in order; it ends with ``length`` at ``max_tokens`` or with
``stop`` (like an end-of-sequence token) when the words run out. Stop sequences and streaming behave exactly as
in the torch engine, because both use ``Completion``, and so does cancellation: a cancelled request gets its
``cancelled`` error at the next step. It never imports torch, so it is ready in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from runtime.cancellation import Cancellation
from runtime.completion import Completion, Decode
from runtime.engine import BatchEvent, LoadReport, too_long
from wire import GenerationRequest

__all__ = ["EchoEngine"]

DEFAULT_CONTEXT_TOKENS = 32768


class EchoEngine:
    def __init__(self, max_context_tokens: int | None = None) -> None:
        self._context_length = max_context_tokens or DEFAULT_CONTEXT_TOKENS

    @property
    def context_length(self) -> int:
        return self._context_length

    def load(self) -> LoadReport:
        return LoadReport(seconds=0.0, bytes_loaded=0, device="none", dtype="none")

    def warmup(self) -> None:
        return None

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        rows: list[tuple[Completion, list[str]]] = []
        for request in requests:
            words = _words(request)
            if error := too_long(request, len(words), self._context_length):
                yield error
                continue
            rows.append((Completion(request, len(words), _decoder(words)), words))
        step = 0
        while rows and not cancellation.batch:
            for completion, words in rows:
                if cancellation.request(completion.request.id):
                    yield completion.cancel()
                else:
                    yield from completion.push(step, end_of_sequence=step >= len(words))
            rows = [(c, w) for c, w in rows if not c.finished]
            step += 1


def _words(request: GenerationRequest) -> list[str]:
    if request.prompt is not None:
        return request.prompt.split()
    return [word for message in request.messages or () for word in message.content.split()]


def _decoder(words: list[str]) -> Decode:
    def decode(ids: Sequence[int]) -> str:
        return " ".join(words[i] for i in ids)

    return decode
