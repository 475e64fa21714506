"""The OpenAI response bodies: ``text_completion`` and ``chat.completion`` objects, their streaming chunks, and the
error body.

A request's choices are indexed in OpenAI's order (prompt by prompt, ``n`` per prompt). Log-probabilities come in
the shape of each API: chat's ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``, and the legacy
completions' ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, where ``top_logprobs`` maps each
alternative's text to its log-probability (the chosen token included, as OpenAI does) and ``text_offset`` counts
characters of the choice's text. Streaming chunks carry the entries of the tokens they complete.

A chat choice with tool calls has them in ``message.tool_calls`` (``content`` null when the model wrote nothing
else); streamed, each call comes whole in one chunk's ``delta.tool_calls`` with its ``index`` among the choice's
calls, its ``id``, ``type`` and ``function`` (name and all the arguments), as OpenAI's first chunk of a call has them.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Sequence
from typing import Any, Literal

import wire

__all__ = ["ResponseShape", "error_body"]


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class _TextOffsets:
    """Where each token of one choice starts in its text, in characters, as its bytes arrive."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.position = 0

    def feed(self, raw: bytes) -> None:
        self.position += len(self._decoder.decode(raw))


class ResponseShape:
    """Builds the response objects of one request: ids and timestamps fixed once, chunks share them."""

    def __init__(self, *, kind: Literal["completion", "chat"], request_id: str, model: str, logprobs: bool) -> None:
        self.kind = kind
        self.id = request_id
        self.model = model
        self.logprobs = logprobs
        self.created = int(time.time())
        self._offsets: dict[int, _TextOffsets] = {}
        self._calls: dict[int, int] = {}  # choice -> tool calls streamed so far

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def final(self, results: Sequence[wire.FinishEvent], usage: wire.Usage) -> dict[str, Any]:
        choices = []
        for index, finish in enumerate(results):
            logprobs = self._logprobs(index, finish.logprobs or ()) if self.logprobs else None
            if self.kind == "completion":
                choice: dict[str, Any] = {"index": index, "text": finish.text, "logprobs": logprobs}
            else:
                message: dict[str, Any] = {"role": "assistant", "content": finish.text}
                if finish.tool_calls:
                    message["content"] = finish.text or None
                    message["tool_calls"] = [call.model_dump() for call in finish.tool_calls]
                choice = {"index": index, "message": message, "logprobs": logprobs}
            choices.append(choice | {"finish_reason": finish.finish_reason})
        obj = "text_completion" if self.kind == "completion" else "chat.completion"
        return self._base(obj) | {"choices": choices, "usage": usage.model_dump()}

    def chunk(
        self,
        index: int,
        text: str,
        logprobs: Sequence[wire.TokenLogprob] = (),
        finish_reason: str | None = None,
        first: bool = False,
        tool_calls: Sequence[wire.ToolCall] = (),
    ) -> dict[str, Any]:
        """A chunk of choice ``index``: new text, its tokens' entries and tool calls, or (``finish_reason``) its
        end."""
        scores = self._logprobs(index, logprobs) if self.logprobs and logprobs else None
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": scores}
            body = self._base("text_completion")
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason is not None and not text:
                delta = {}
            if tool_calls:
                delta = {**delta, "content": text or None, "tool_calls": self._call_deltas(index, tool_calls)}
            choice = {"index": index, "delta": delta, "logprobs": scores}
            body = self._base("chat.completion.chunk")
        choice["finish_reason"] = finish_reason
        return body | {"choices": [choice]}

    def _call_deltas(self, index: int, calls: Sequence[wire.ToolCall]) -> list[dict[str, Any]]:
        first = self._calls.get(index, 0)
        self._calls[index] = first + len(calls)
        return [{"index": first + n, **call.model_dump()} for n, call in enumerate(calls)]

    def usage_chunk(self, usage: wire.Usage) -> dict[str, Any]:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        return self._base(obj) | {"choices": [], "usage": usage.model_dump()}

    def _logprobs(self, index: int, entries: Sequence[wire.TokenLogprob]) -> dict[str, Any]:
        if self.kind == "chat":
            return {"content": [_chat_entry(e) for e in entries], "refusal": None}
        return _legacy(entries, self._offsets.setdefault(index, _TextOffsets()))


def _chat_entry(entry: wire.TokenLogprob) -> dict[str, Any]:
    top = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top_logprobs]
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes), "top_logprobs": top}


def _legacy(entries: Sequence[wire.TokenLogprob], offsets: _TextOffsets) -> dict[str, Any]:
    """The completions API's shape; the first token of an echoed prompt has null log-probabilities."""
    tokens, logprobs, tops, starts = [], [], [], []
    for entry in entries:
        tokens.append(entry.token)
        logprobs.append(entry.logprob)
        tops.append(
            None
            if entry.logprob is None
            else {t.token: t.logprob for t in entry.top_logprobs} | {entry.token: entry.logprob}
        )
        starts.append(offsets.position)
        offsets.feed(bytes(entry.bytes))
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": starts}
