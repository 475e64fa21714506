"""The OpenAI-compatible request bodies we accept, validated, and turned into the runtime's wire requests.

``parse_request`` refuses unsupported features first (``gateway.api.refusals``), then validates the body strictly
(no coercion: ``"stream": "yes"`` is an error) and reports the first problem as one 400 whose message says what is
wrong in plain words and whose ``param`` is an OpenAI-style path (``messages[1].content``); unknown fields get
OpenAI's "Unrecognized request argument supplied". Optional fields accept ``null`` as "not given", as OpenAI does.
A parsed request knows its prompts (``inputs``), its sampling parameters and how many choices it wants per prompt;
``gateway.api.choices`` makes one wire request per choice. Response bodies are built in ``gateway.api.bodies``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

import wire
from gateway.api.bounds import check_depth, field_path
from gateway.api.refusals import refuse_unsupported
from gateway.api.tools import NamedToolChoice, ResponseFormat, ToolDefinition
from gateway.errors import InvalidRequest

__all__ = [
    "MAX_SEED",
    "ChatCompletionRequest",
    "CompletionRequest",
    "PromptInput",
    "parse_request",
]

MAX_SEED = 2**63 - 1
#: Most choices (prompts x ``n``) one request may ask for, whatever the model; a model's own ``max-batch-size`` is
#: usually the tighter bound (``gateway.api.choices``).
MAX_CHOICES = 128
#: Most alternatives per token: OpenAI's limits (chat ``top_logprobs``, completions ``logprobs``).
MAX_CHAT_LOGPROBS = wire.MAX_LOGPROBS
MAX_COMPLETION_LOGPROBS = 5

#: Most digits of a ``logit_bias`` key: every vocabulary's token ids fit in 10 (Python refuses to convert a string of
#: more than 4,300 digits to an integer at all).
MAX_TOKEN_ID_DIGITS = 10

#: One prompt as the wire carries it: the fields of ``wire.GenerationRequest`` that say what to continue.
PromptInput = dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # ignored: nothing is padded here


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: tuple[str, ...] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # ignored (gateway.api.refusals.IGNORED)

    @field_validator("stop", mode="plain")
    @classmethod
    def _stop_sequences(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or an array of strings")
        if len(stops) > wire.MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {wire.MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > wire.MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop sequences must be at most {wire.MAX_STOP_LENGTH} characters long")
        return tuple(stops)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not (token.isascii() and token.isdigit() and len(token) <= MAX_TOKEN_ID_DIGITS):
                shown = repr(token) if len(token) <= 20 else f"{token[:20]!r}... ({len(token)} characters)"
                raise ValueError(
                    f"keys must be token ids (integers of at most {MAX_TOKEN_ID_DIGITS} digits, written as strings), "
                    f"not {shown}"
                )
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {token} must be between -100 and 100")
        if len(value or {}) > wire.MAX_LOGIT_BIAS:
            raise ValueError(f"at most {wire.MAX_LOGIT_BIAS} tokens")
        return value

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    def logprobs_wanted(self) -> int | None:
        """How many alternatives per token the wire should ask for; None: no log-probabilities."""
        return None

    def check(self) -> None:
        """Rules across fields, which validation of each field alone cannot see."""

    def inputs(self) -> list[PromptInput]:
        raise NotImplementedError

    def sampling_params(self, default_max_tokens: int, seed: int) -> wire.SamplingParams:
        return wire.SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=self.stop or (),
            seed=seed,
            logprobs=self.logprobs_wanted(),
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias={int(token): bias for token, bias in (self.logit_bias or {}).items()},
        )


class CompletionRequest(_Sampling):
    """``POST /v1/completions``. ``prompt`` is a string, an array of strings, an array of token ids or an array of
    arrays of token ids: one prompt each, answered by ``n`` choices each, in that order."""

    prompt: tuple[str | tuple[int, ...], ...]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = None  # only equal to n (gateway.api.refusals), which changes nothing
    suffix: str | None = None  # only empty (gateway.api.refusals)

    @field_validator("prompt", mode="plain")
    @classmethod
    def _prompts(cls, value: Any) -> tuple[str | tuple[int, ...], ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not value:
            raise ValueError("must be a string, an array of strings, an array of token ids or an array of those")
        if all(_is_token_id(v) for v in value):
            return (tuple(value),)
        if all(isinstance(v, str) for v in value):
            return tuple(value)
        if all(isinstance(v, list) and v and all(_is_token_id(t) for t in v) for v in value):
            return tuple(tuple(v) for v in value)
        raise ValueError(
            "must be a string, an array of strings, an array of token ids (integers of at least 0) or an array of "
            "non-empty arrays of token ids, not a mix"
        )

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def inputs(self) -> list[PromptInput]:
        echo = bool(self.echo)
        return [
            {"prompt": p, "echo": echo} if isinstance(p, str) else {"prompt_token_ids": p, "echo": echo}
            for p in self.prompt
        ]


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None  # an assistant's earlier refusal: its text, when it has no content

    @field_validator("content", mode="plain")
    @classmethod
    def _text(cls, value: Any) -> str | None:
        """A string, or an array of text (or refusal) parts, which are joined; their other keys (a prompt-cache
        breakpoint, say) are ignored."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or an array of content parts")
        texts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            key = {"text": "text", "refusal": "refusal"}.get(str(kind))
            if key is None or not isinstance(part.get(key), str):
                raise ValueError("content parts must be {'type': 'text', 'text': <string>}")
            texts.append(part[key])
        return "".join(texts)

    def check(self, where: str) -> None:
        if self.tool_calls and self.role != "assistant":
            raise InvalidRequest("Only assistant messages may have 'tool_calls'.", param=f"{where}.tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise InvalidRequest("A message with role 'tool' needs 'tool_call_id'.", param=f"{where}.tool_call_id")
        if self.role != "tool" and self.tool_call_id is not None:
            raise InvalidRequest("Only tool messages have 'tool_call_id'.", param=f"{where}.tool_call_id")
        if self.content is None and self.refusal is None and not self.tool_calls:
            needs = "'content' or 'tool_calls'" if self.role == "assistant" else "'content'"
            raise InvalidRequest(f"A message with role '{self.role}' needs {needs}.", param=f"{where}.content")

    def to_wire(self) -> wire.ChatMessage:
        calls = tuple(
            wire.ToolCall(id=c.id, function=wire.FunctionCall(name=c.function.name, arguments=c.function.arguments))
            for c in self.tool_calls or ()
        )
        content = self.content if self.content is not None else self.refusal
        return wire.ChatMessage(
            role=self.role, content=content, name=self.name, tool_calls=calls, tool_call_id=self.tool_call_id
        )


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(None, max_length=wire.MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Accepted only where they change nothing; anything else is refused (gateway.api.refusals).
    function_call: Literal["none"] | None = None
    modalities: list[Literal["text"]] | None = None
    # Ignored: they cannot change the output (gateway.api.refusals.IGNORED).
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    prediction: dict[str, Any] | None = None

    @field_validator("tool_choice", mode="plain")
    @classmethod
    def _tool_choice(cls, value: Any) -> str | NamedToolChoice | None:
        if value is None or value in ("none", "auto", "required"):
            return value  # type: ignore[no-any-return]
        try:
            return NamedToolChoice.model_validate(value, strict=True)
        except ValidationError:
            raise ValueError(
                "must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': <a tool's name>}}"
            ) from None

    def check(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs' to be true.", param="top_logprobs")
        for index, message in enumerate(self.messages):
            message.check(f"messages[{index}]")
        self._check_tools()

    def _check_tools(self) -> None:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise InvalidRequest("Tool names must be unique.", param="tools")
        if self.tool_choice is not None and self.tool_choice != "none" and not names:
            raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise InvalidRequest(
                f"'tool_choice' names the function '{self.tool_choice.function.name}', which is not in 'tools'.",
                param="tool_choice",
            )

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def inputs(self) -> list[PromptInput]:
        prompt: PromptInput = {"messages": tuple(m.to_wire() for m in self.messages)}
        if self.tools:
            prompt["tools"] = tuple(tool.function.to_wire() for tool in self.tools)
        if isinstance(self.tool_choice, NamedToolChoice):
            prompt["tool_choice"] = wire.ForcedTool(name=self.tool_choice.function.name)
        elif self.tool_choice is not None and self.tools:
            prompt["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            prompt["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None:
            prompt["response_format"] = self.response_format.to_wire()
        return [prompt]

    def sampling_params(self, default_max_tokens: int, seed: int) -> wire.SamplingParams:
        params = super().sampling_params(default_max_tokens, seed)
        if self.max_completion_tokens is not None and self.max_tokens is None:
            params = params.model_copy(update={"max_tokens": self.max_completion_tokens})
        return params


_Request = TypeVar("_Request", bound=_Sampling)


def parse_request(model: type[_Request], body: Any) -> _Request:
    """Validate a decoded JSON body, turning the first problem into one OpenAI-style 400."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    refuse_unsupported("completion" if model is CompletionRequest else "chat", body)
    try:
        parsed = model.model_validate(body, strict=True)  # no coercion: "stream": "yes" is an error, not true
    except ValidationError as exc:
        raise _invalid(exc.errors()[0]) from None
    check_depth(body)  # after validation: a schema too deep is named by its own bound (``gateway.api.tools``)
    parsed.check()
    return parsed


def _invalid(error: ErrorDetails) -> InvalidRequest:
    param = field_path(error["loc"])
    if error["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if error["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequest(f"Invalid value for '{param}': {_reason(error)}.", param=param)


_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _reason(error: ErrorDetails) -> str:
    """Pydantic's report of one error, in words for a client (no type names, no union branches)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _TYPES:
        return f"expected {_TYPES[kind]}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind == "value_error":
        return str(ctx.get("error", "invalid value"))
    if kind.startswith("string_") and "min_length" in ctx:
        return "must not be empty"
    return "invalid value"
