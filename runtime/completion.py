"""One request's output as tokens arrive: stop sequences, streaming deltas, finish reason and usage.

Engine-independent and torch-free: an engine feeds it token ids and a way to decode them. Requests that neither
stream nor have stop sequences decode all their ids once, at the end. The others follow the text token by token
with ``IncrementalText``, which decodes a short window of recent ids instead of everything so far (a full decode
per step would cost O(n^2): about a second of CPU per 4k-token answer, on the generation thread). Streaming
deltas are diffs against what was already sent, and a delta never includes a trailing U+FFFD (the start of a
character whose remaining bytes are not generated yet) nor a tail that could be the beginning of a stop sequence,
so nothing sent ever has to be taken back, and the deltas concatenate to exactly the ``FinishEvent`` text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from runtime.cancellation import cancelled_event
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent, Usage

__all__ = ["Completion", "Decode", "IncrementalText", "holdback_start"]

log = logging.getLogger(__name__)

Decode = Callable[[Sequence[int]], str]
_REPLACEMENT = "\ufffd"


class Completion:
    def __init__(self, request: GenerationRequest, prompt_tokens: int, decode: Decode) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self._decode = decode
        self._token_ids: list[int] = []
        self._completion_tokens = 0
        self._sent = ""
        # Following the text every step is only needed to find stop sequences or to stream.
        self._text = IncrementalText(decode) if request.stream or request.params.stop else None
        self.finished = False

    @property
    def completion_tokens(self) -> int:
        return self._completion_tokens

    def push(self, token_id: int, *, end_of_sequence: bool = False) -> list[TokenEvent | FinishEvent]:
        """Take one generated token; return the events it causes (none, a delta, and/or the finish)."""
        if self.finished:
            raise ValueError(f"request {self.request.id} is already finished")
        self._completion_tokens += 1
        if end_of_sequence:
            return self._finish("stop", self._text.text if self._text else self._decode(self._token_ids))
        at_limit = self._completion_tokens >= self.request.params.max_tokens
        if self._text is None:
            self._token_ids.append(token_id)
            return self._finish("length", self._decode(self._token_ids)) if at_limit else []
        text = self._text.append(token_id)
        stop_at = _first_stop(text, self.request.params.stop)
        if stop_at is not None:
            return self._finish("stop", text[:stop_at])
        if at_limit:
            return self._finish("length", text)
        return self._delta(text[: holdback_start(text, self.request.params.stop)])

    def cancel(self) -> ErrorEvent:
        """End the request as cancelled: no text, no usage (nobody is there to read them)."""
        if self.finished:
            raise ValueError(f"request {self.request.id} is already finished")
        self.finished = True
        return cancelled_event(self.request.id)

    def _delta(self, safe_text: str) -> list[TokenEvent | FinishEvent]:
        if not self.request.stream or len(safe_text) <= len(self._sent):
            return []
        if not safe_text.startswith(self._sent):
            # The decoded prefix changed under us (a tokenizer that rewrites earlier text); wait for the end.
            return []
        delta = safe_text[len(self._sent) :]
        self._sent = safe_text
        return [TokenEvent(id=self.request.id, text=delta)]

    def _finish(self, reason: Literal["stop", "length"], text: str) -> list[TokenEvent | FinishEvent]:
        self.finished = True
        events: list[TokenEvent | FinishEvent] = []
        if self.request.stream:
            if not text.startswith(self._sent):
                log.warning("request %s: final text does not extend the streamed text", self.request.id)
                text = self._sent + text[_common_prefix(text, self._sent) :]
            if rest := text[len(self._sent) :]:
                events.append(TokenEvent(id=self.request.id, text=rest))
                self._sent = text
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            total_tokens=self.prompt_tokens + self._completion_tokens,
        )
        events.append(FinishEvent(id=self.request.id, text=text, finish_reason=reason, usage=usage))
        return events


class IncrementalText:
    """The decoded text of a growing id sequence, decoding only a window of recent ids per step.

    The window starts at ``_prefix`` and the text of ``ids[_prefix:_read]`` is already part of ``_stable``; a
    new token's text is ``decode(ids[_prefix:])`` minus ``decode(ids[_prefix:_read])``. Decoding from one token
    earlier than the new ones keeps tokenizers that strip a leading space at the start of a decode (SentencePiece)
    right, and the window only moves on once its text no longer ends in an incomplete character. This is the
    scheme text-generation-inference and vLLM use.
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = self._read = 0
        self._prefix_text = ""
        self._stable = ""
        self._pending = ""

    @property
    def text(self) -> str:
        return self._stable + self._pending

    def append(self, token_id: int) -> str:
        """Add one id; return the whole text so far (possibly ending in U+FFFD)."""
        self._ids.append(token_id)
        window = self._decode(self._ids[self._prefix :])
        if not window.startswith(self._prefix_text):
            # The new token changed how earlier ones decode: fall back to decoding everything, once.
            self._stable, self._pending = self._decode(self._ids), ""
            self._prefix, self._read = len(self._ids) - 1, len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix :])
            return self.text
        self._pending = window[len(self._prefix_text) :]
        if self._pending and not self._pending.endswith(_REPLACEMENT):
            self._stable += self._pending
            self._pending = ""
            self._prefix, self._read = self._read, len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        return self.text


def holdback_start(text: str, stops: Sequence[str]) -> int:
    """Where the part of ``text`` that must not be streamed yet begins: a trailing incomplete character, or a
    suffix that is a proper prefix of some stop sequence (the next token may complete it)."""
    end = len(text.rstrip(_REPLACEMENT))
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:size], 0, end):
                held = size
                break
    return end - held


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return min(found) if found else None


def _common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size
