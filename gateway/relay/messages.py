"""The messages a dispatcher sends to the gateway replica holding a request's client.

Non-final ones (``Dispatched``, ``Token``) travel on pub/sub only; a final one (``Finished``, ``Failed``) is also
stored in the request's ``settled`` key, so a waiting request that missed it on pub/sub can still read it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer

import wire


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str


class Dispatched(_Reply):
    """The request was sent to a ready replica (attempt N): the cold start, if any, is over. ``cold_start_ms``: how
    long of its wait the request spent waiting for that replica to become ready (0: it was ready when the request
    came), for the client's ``x-kaltstart-cold-start-ms``; left out of the JSON while 0."""

    kind: Literal["dispatched"] = "dispatched"
    attempt: int
    cold_start_ms: int = Field(0, ge=0)

    @model_serializer(mode="wrap")
    def _without_zero_cold_start(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A gateway replica that predates the field (its messages forbid unknown fields) still reads warm dispatches.
        data = handler(self)
        if isinstance(data, dict) and not self.cold_start_ms:
            data.pop("cold_start_ms", None)
        return data


class Token(_Reply):
    """Streamed text of attempt N, with its tokens' log-probability entries when they were asked for, and the tool
    calls completed since the last one. A redelivered request starts again from its first token."""

    kind: Literal["token"] = "token"
    attempt: int
    text: str
    logprobs: tuple[wire.TokenLogprob, ...] = ()
    tool_calls: tuple[wire.ToolCall, ...] = ()


class Finished(_Reply):
    kind: Literal["finished"] = "finished"
    result: wire.FinishEvent


class Failed(_Reply):
    """The request will not be answered: ``status`` is the HTTP status to give the client."""

    kind: Literal["failed"] = "failed"
    status: int
    message: str


class Chunk(_Reply):
    """Server-sent events of an OpenAI-compatible upstream (``protocol = openai``), relayed as they came: each
    ``data`` is one event's payload (a chunk's JSON), in order."""

    kind: Literal["chunk"] = "chunk"
    attempt: int
    data: tuple[str, ...]


class Answered(_Reply):
    """An upstream's answer to a forwarded request: its status and body (JSON) when it was not streamed, or when
    it refused the request; a streamed one that ended well has status 200 and no body (its chunks came before)."""

    kind: Literal["answered"] = "answered"
    status: int
    body: str = ""


#: What a client is told when an upstream's stream it had begun broke off (``Failed``): never a spliced second attempt.
BROKEN_STREAM = "The model's server failed while streaming the answer; try again."

AnyReply = Dispatched | Token | Finished | Failed | Chunk | Answered
Progress = Dispatched | Token | Chunk
Final = Finished | Failed | Answered
ReplyAdapter: TypeAdapter[AnyReply] = TypeAdapter(Annotated[AnyReply, Field(discriminator="kind")])
#: A flush (``gateway.relay.buffer``): the replies for one reply channel, in order, as one JSON array.
RepliesAdapter: TypeAdapter[list[AnyReply]] = TypeAdapter(list[Annotated[AnyReply, Field(discriminator="kind")]])
