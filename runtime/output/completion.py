"""One request's output as tokens arrive: stop sequences, streaming deltas, log-probabilities, finish reason and usage.

Engine-independent and torch-free: an engine feeds it token ids (with their scores, for a request that asked for
``logprobs``) and a way to decode them. Requests that neither stream nor have stop sequences decode all their ids
once, at the end. The others follow the text token by token with ``IncrementalText``, which decodes a short window
of recent ids instead of everything so far (a full decode per step would cost O(n^2): about a second of CPU per
4k-token answer, on the generation thread). Streaming deltas are diffs against what was already sent, and a delta
never includes a trailing U+FFFD (the start of a character whose remaining bytes are not generated yet) nor a tail
that could be the beginning of a stop sequence, so nothing sent ever has to be taken back, and the deltas
concatenate to exactly the ``FinishEvent`` text.

Log-probability entries follow the same rule: an entry goes out with the first delta that carries some of its
token's text, never before, so an entry sent is never one a stop sequence later cuts off. The output of an
``echo`` request starts with its prompt (and the prompt's entries), sent with the first delta.

A request that may call tools is seen through its model's ``ToolFormat`` (``runtime.output.toolcalls``): deltas carry
the content outside the calls' markup (the markup is held until a call is complete) and each call once it is
whole; the finish has the content, the calls and ``finish_reason`` ``tool_calls`` when there are any. Their
log-probability entries cover every generated token, markup included, and go out once no stop sequence can cut
their token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from runtime.cancellation import cancelled_event
from runtime.output.logprobs import Logprob, Vocabulary
from runtime.output.toolcalls import ToolFormat
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent, TokenLogprob, ToolCall, Usage

__all__ = ["Completion", "Decode", "EchoedPrompt", "IncrementalText", "holdback_start"]

log = logging.getLogger(__name__)

Decode = Callable[[Sequence[int]], str]
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class EchoedPrompt:
    """What an ``echo`` request's output starts with: the prompt's text, and its tokens' entries (with
    ``logprobs``)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


class Completion:
    def __init__(
        self,
        request: GenerationRequest,
        prompt_tokens: int,
        decode: Decode,
        *,
        vocabulary: Vocabulary | None = None,
        echo: EchoedPrompt | None = None,
        tools: ToolFormat | None = None,
    ) -> None:
        """``tools``: the model's tool-call format, for a request that may call tools."""
        self.request = request
        self.prompt_tokens = prompt_tokens
        self._decode = decode
        self._vocabulary = vocabulary
        self._token_ids: list[int] = []
        self._completion_tokens = 0
        self._prefix = echo.text if echo is not None and request.echo else ""
        self._sent = ""  # of the output: the echoed prompt, then the text
        # Entries of the output's tokens, and where each token's text starts in the output (-1: the echoed prompt).
        self._entries: list[TokenLogprob] = list(echo.logprobs) if echo is not None and request.echo else []
        self._starts: list[int] = [-1] * len(self._entries)
        self._entries_sent = 0
        self._tools = tools
        self._calls_sent = 0
        # Following the text every step is only needed to find stop sequences or to stream.
        self._text = IncrementalText(decode) if request.stream or request.params.stop else None
        self.finished = False

    @property
    def completion_tokens(self) -> int:
        return self._completion_tokens

    @property
    def wants_logprobs(self) -> bool:
        return self.request.params.logprobs is not None

    def push(
        self, token_id: int, *, end_of_sequence: bool = False, logprob: Logprob | None = None
    ) -> list[TokenEvent | FinishEvent]:
        """Take one generated token (and its scores); return the events it causes (none, a delta, the finish)."""
        if self.finished:
            raise ValueError(f"request {self.request.id} is already finished")
        self._completion_tokens += 1
        if end_of_sequence:
            return self._finish("stop", self._text.text if self._text else self._decode(self._token_ids))
        self._record(token_id, logprob)
        at_limit = self._completion_tokens >= self.request.params.max_tokens
        if self._text is None:
            self._token_ids.append(token_id)
            return self._finish("length", self._decode(self._token_ids)) if at_limit else []
        text = self._text.append(token_id)
        stop_at = _first_stop(text, self.request.params.stop)
        if stop_at is not None:
            return self._finish("stop", text[:stop_at], cut=True)
        if at_limit:
            return self._finish("length", text)
        return self._delta(text[: holdback_start(text, self.request.params.stop)])

    def cancel(self) -> ErrorEvent:
        """End the request as cancelled: no text, no usage (nobody is there to read them)."""
        if self.finished:
            raise ValueError(f"request {self.request.id} is already finished")
        self.finished = True
        return cancelled_event(self.request.id)

    def _record(self, token_id: int, logprob: Logprob | None) -> None:
        if not self.wants_logprobs or logprob is None or self._vocabulary is None:
            return
        self._entries.append(self._vocabulary.entry(token_id, logprob))
        self._starts.append(len(self._prefix) + (len(self._text.text) if self._text else 0))

    def _delta(self, safe_text: str) -> list[TokenEvent | FinishEvent]:
        output, calls = self._view(safe_text, final=False)
        if not self.request.stream or not output.startswith(self._sent):
            # (Not a prefix: the decoded text changed under us, a tokenizer that rewrites earlier text; wait.)
            return []
        delta, new_calls = output[len(self._sent) :], calls[self._calls_sent :]
        if not delta and not new_calls:
            return []
        self._sent, self._calls_sent = output, len(calls)
        covered = len(self._prefix) + len(safe_text) if self._tools else len(output)
        return [TokenEvent(id=self.request.id, text=delta, logprobs=self._take_entries(covered), tool_calls=new_calls)]

    def _view(self, text: str, *, final: bool) -> tuple[str, tuple[ToolCall, ...]]:
        """The output as the client sees it: with tools, the content outside the calls' markup and the calls."""
        if self._tools is None:
            return self._prefix + text, ()
        split = self._tools.split(text, self.request.id, final=final)
        return self._prefix + split.content, split.calls

    def _take_entries(self, covered: int) -> tuple[TokenLogprob, ...]:
        """The entries not sent yet whose token's text starts before ``covered``: they go out now."""
        end = self._entries_sent
        while end < len(self._entries) and self._starts[end] < covered:
            end += 1
        taken = tuple(self._entries[self._entries_sent : end])
        self._entries_sent = end
        return taken

    def _finish(
        self, reason: Literal["stop", "length"], text: str, cut: bool = False
    ) -> list[TokenEvent | FinishEvent]:
        """``cut``: a stop sequence ended the text, so tokens whose text lies wholly beyond it are not part of it."""
        self.finished = True
        if cut:
            kept = sum(1 for start in self._starts if start < len(self._prefix) + len(text))
            del self._entries[max(kept, self._entries_sent) :]
        output, calls = self._view(text, final=True)
        events: list[TokenEvent | FinishEvent] = []
        if self.request.stream:
            if not output.startswith(self._sent):
                log.warning("request %s: final text does not extend the streamed text", self.request.id)
                output = self._sent + output[_common_prefix(output, self._sent) :]
            rest, new_calls = output[len(self._sent) :], calls[self._calls_sent :]
            entries = tuple(self._entries[self._entries_sent :])
            self._entries_sent = len(self._entries)
            if rest or entries or new_calls:
                events.append(TokenEvent(id=self.request.id, text=rest, logprobs=entries, tool_calls=new_calls))
                self._sent, self._calls_sent = output, len(calls)
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            total_tokens=self.prompt_tokens + self._completion_tokens,
        )
        logprobs = tuple(self._entries) if self.wants_logprobs else None
        finish_reason = "tool_calls" if calls and reason == "stop" else reason
        events.append(
            FinishEvent(
                id=self.request.id,
                text=output,
                finish_reason=finish_reason,
                usage=usage,
                logprobs=logprobs,
                tool_calls=calls,
            )
        )
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
