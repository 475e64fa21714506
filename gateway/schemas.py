"""The OpenAI-compatible HTTP surface: request bodies we accept and the response bodies we build.

Requests are validated here and turned into the runtime's ``wire.GenerationRequest``; results from the runtime
are turned into OpenAI ``text_completion`` / ``chat.completion`` objects and their streaming chunks.
Unknown fields are accepted and ignored, as clients (and the openai SDK) send options we do not implement.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import wire
from gateway.errors import InvalidRequest

MAX_SEED = 2**63 - 1


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > wire.MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {wire.MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def sampling_params(self, default_max_tokens: int) -> wire.SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return wire.SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stops),
            # A seed fixed at admission makes a redelivered request sample exactly what it sampled before.
            seed=self.seed if self.seed is not None else secrets.randbelow(MAX_SEED),
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported per request")
        return value

    def to_wire(self, request_id: str, default_max_tokens: int = 16) -> wire.GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return wire.GenerationRequest(
            id=request_id, prompt=prompt, params=self.sampling_params(default_max_tokens), stream=self.stream
        )


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart]

    def to_wire(self) -> wire.ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return wire.ChatMessage(role=self.role, content=text)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def to_wire(self, request_id: str, default_max_tokens: int) -> wire.GenerationRequest:
        params = self.sampling_params(default_max_tokens)
        if self.max_completion_tokens is not None and self.max_tokens is None:
            params = params.model_copy(update={"max_tokens": self.max_completion_tokens})
        return wire.GenerationRequest(
            id=request_id,
            messages=tuple(m.to_wire() for m in self.messages),
            params=params,
            stream=self.stream,
        )


_Request = TypeVar("_Request", bound=_Sampling)


def parse_request(model: type[_Request], body: Any) -> _Request:
    """Validate a decoded JSON body, turning pydantic's report into one OpenAI-style 400."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(body, strict=True)  # no coercion: "stream": "yes" is an error, not true
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}", param=param) from None


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _usage(usage: wire.Usage) -> dict[str, int]:
    return usage.model_dump()


class ResponseShape:
    """Builds the response objects of one request: ids and timestamps fixed once, chunks share them."""

    def __init__(self, kind: Literal["completion", "chat"], request_id: str, model: str) -> None:
        self.kind = kind
        self.id = request_id
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def final(self, finish: wire.FinishEvent) -> dict[str, Any]:
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": finish.text, "logprobs": None}
            body = self._base("text_completion")
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": finish.text}, "logprobs": None}
            body = self._base("chat.completion")
        choice["finish_reason"] = finish.finish_reason
        return body | {"choices": [choice], "usage": _usage(finish.usage)}

    def chunk(self, text: str, finish_reason: str | None = None, first: bool = False) -> dict[str, Any]:
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None}
            body = self._base("text_completion")
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason is not None and not text:
                delta = {}
            choice = {"index": 0, "delta": delta, "logprobs": None}
            body = self._base("chat.completion.chunk")
        choice["finish_reason"] = finish_reason
        return body | {"choices": [choice]}

    def usage_chunk(self, usage: wire.Usage) -> dict[str, Any]:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        return self._base(obj) | {"choices": [], "usage": _usage(usage)}
