"""What the queue holds for a model whose replicas speak OpenAI's API (``protocol = openai``).

Such a request is not taken apart into the runtime's ``wire.GenerationRequest``: the client's body goes to the
upstream as it came (the model name rewritten to the one the upstream serves), so fields the gateway does not know
(vLLM's ``guided_json``, ``chat_template_kwargs``, ...) reach the server that does. One queue entry per client
request, whatever its ``n``: the upstream answers all its choices at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["UPSTREAM_PATHS", "UpstreamRequest"]

#: The routes forwarded, by the kind of request.
UPSTREAM_PATHS = {"completion": "/v1/completions", "chat": "/v1/chat/completions"}


class UpstreamRequest(BaseModel):
    """One client request for an OpenAI-compatible upstream: where it goes, and its body (JSON text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    #: Tells a stored upstream request from a ``wire.GenerationRequest`` (which has no ``kind``).
    kind: Literal["upstream"] = "upstream"
    id: str = Field(min_length=1, max_length=256)
    path: Literal["/v1/completions", "/v1/chat/completions"]
    body: str
    stream: bool = False

    @property
    def seed(self) -> None:
        """The upstream samples as it likes; a redelivered request is not promised the same tokens."""
        return None
