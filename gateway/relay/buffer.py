"""Token flushing: the replies a dispatcher relays from one read of a runtime's answer, one message per channel.

A runtime streams one NDJSON event per token. Relaying each on its own (one ``PUBLISH``, one pub/sub message, one
parse, one server-sent event) cost the gateway ~0.4 ms of CPU per token (docs/architecture.md, "The hot path,
profiled"). Instead the dispatcher reads what arrived on the stream (``ndjson_reads``: the complete lines of one
read), adds the replies to a ``ReplyBuffer`` and flushes it once per read: all replies for one reply channel go
in one message, and consecutive tokens of one request (same attempt) become one ``Token``. Order is kept per
request; a request's final reply is written only after a flush of everything before it (the dispatcher flushes
before it settles).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

from gateway.relay.messages import Chunk, Progress, Token

__all__ = ["ReplyBuffer", "ndjson_reads"]


class ProgressSender(Protocol):
    """Where a flush goes: ``gateway.relay.transport.ReplySender``."""

    async def send(self, by_channel: Mapping[str, Sequence[Progress]]) -> None: ...


class ReplyBuffer:
    """Non-final replies waiting for the next flush, per reply channel, in arrival order."""

    def __init__(self, sender: ProgressSender) -> None:
        self._sender = sender
        self._pending: dict[str, list[Progress]] = {}

    def add(self, channel: str, reply: Progress) -> None:
        replies = self._pending.setdefault(channel, [])
        if replies and isinstance(reply, Token | Chunk) and (merged := _merged(replies[-1], reply)) is not None:
            replies[-1] = merged
        else:
            replies.append(reply)

    def __len__(self) -> int:
        return sum(len(replies) for replies in self._pending.values())

    async def flush(self) -> None:
        """Send what is pending: one message per reply channel. Nothing pending, nothing sent."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        await self._sender.send(pending)


def _merged(last: Progress, token: Token | Chunk) -> Token | Chunk | None:
    """Two consecutive tokens of one attempt as one (text, log-probability entries and tool calls appended); two
    consecutive chunk messages likewise (their events in order)."""
    if type(last) is not type(token) or last.id != token.id or last.attempt != token.attempt:
        return None
    if isinstance(token, Chunk):
        assert isinstance(last, Chunk)
        return Chunk(id=token.id, attempt=token.attempt, data=last.data + token.data)
    assert isinstance(last, Token)
    return Token(
        id=token.id,
        attempt=token.attempt,
        text=last.text + token.text,
        logprobs=last.logprobs + token.logprobs,
        tool_calls=last.tool_calls + token.tool_calls,
    )


async def ndjson_reads(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The complete, non-blank lines of each chunk read (a line cut by a read is finished by the next one)."""
    rest = b""
    async for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        if complete := [line for line in lines if line.strip()]:
            yield complete
    if rest.strip():
        yield [rest]
