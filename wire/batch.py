"""What travels in ``POST /v1/batch``: the requests (prompts or chat messages, sampling parameters, tools, response
formats) and the NDJSON events of the answer (see ``wire``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from wire.base import (
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_REQUEST_ID_LENGTH,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
    _Evolving,
    _Wire,
)
from wire.replica import ModelName


class FunctionCall(_Wire):
    name: str
    #: The arguments as the model wrote them: JSON text, by convention an object.
    arguments: str


class ToolCall(_Wire):
    """A call an assistant turn made (OpenAI's ``tool_calls`` entry)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Evolving):
    """One turn. ``content`` is None only for an assistant turn that made ``tool_calls``; a ``tool`` turn answers
    the call named by ``tool_call_id``. ``name`` is the participant's name, for chat templates that render it."""

    _newer = ("name", "tool_calls", "tool_call_id")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("'content' may be null only in an assistant message with 'tool_calls'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        return self


class SamplingParams(_Evolving):
    """How to generate. ``temperature == 0`` means greedy decoding.

    Each step the row's logits pass its *logits processors* first (``frequency_penalty`` and ``presence_penalty``
    over the tokens it generated so far, then ``logit_bias``), then temperature and ``top_p`` choose the token.
    ``logprobs`` reports the log-probabilities of the processed logits (after penalties and bias, before
    temperature and ``top_p``). With none of the new fields set a request samples exactly what it did before."""

    _newer = ("logprobs", "frequency_penalty", "presence_penalty", "logit_bias")

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: tuple[Annotated[str, Field(max_length=MAX_STOP_LENGTH)], ...] = Field((), max_length=MAX_STOP_SEQUENCES)
    # The gateway fills in a seed when the client gave none, so that a request redelivered after a replica
    # failure samples the same tokens again.
    seed: int | None = None
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="None: no log-probabilities; k: each generated token's, with its k most likely alternatives",
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="subtracted from a token's logit once per time the row generated it"
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="subtracted from a token's logit once the row generated it at all"
    )
    logit_bias: dict[int, float] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS,
        description="token id -> added to its logit (-100 bans it, +100 forces it in effect)",
    )

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, bias: dict[int, float]) -> dict[int, float]:
        if any(token < 0 for token in bias):
            raise ValueError("logit_bias token ids must not be negative")
        if any(not -100.0 <= value <= 100.0 for value in bias.values()):
            raise ValueError("logit_bias values must be between -100 and 100")
        return bias


class FunctionDefinition(_Wire):
    """A function the model may call: its name, what it does, and the JSON Schema of its arguments object."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="JSON Schema of the arguments (an object); None: a function that takes none"
    )


class Tool(_Wire):
    """A tool declared to the model (OpenAI's ``tools`` entry); only functions exist."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class ForcedTool(_Wire):
    """``tool_choice`` naming one function: the model must call exactly it."""

    name: str = Field(min_length=1)


#: ``none``: the model answers in text (the tools are still shown to it); ``auto``: it may call tools, and calls it
#: writes in its family's markup are parsed out; ``required``: it must call at least one (constrained decoding);
#: a ``ForcedTool``: it must call that one.
ToolChoice = Literal["none", "auto", "required"] | ForcedTool


class ResponseFormat(_Wire):
    """Structured output: the answer is one JSON object (``json_object``) or a JSON value valid for
    ``json_schema`` (``json_schema``), enforced by constrained decoding."""

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = Field(None, description="the JSON Schema, for type json_schema only")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is given exactly when 'type' is 'json_schema'")
        return self


class AdapterRef(_Wire):
    """A LoRA adapter (PEFT format: ``adapter_config.json`` + safetensors) a request is generated with, on top of
    the batch's base model."""

    name: ModelName = Field(description="the adapter's model name, as clients call it")
    source: str = Field(
        min_length=1,
        max_length=1024,
        description="a local directory, or a hub id org/repo[@rev], resolved into the node-local cache like a base "
        "model's --source",
    )


class GenerationRequest(_Evolving):
    """One request in a batch: a plain ``prompt`` (text), a ``prompt_token_ids`` (token ids, used as they are), or
    chat ``messages``: exactly one. ``echo`` (plain prompts only) puts the prompt before the generated text, and
    with ``params.logprobs`` the prompt tokens' log-probabilities (the first one null) before the generated ones.

    Chat requests only: ``tools`` are declared to the model through its chat template; ``tool_choice`` says
    whether it may, must or must not call them; ``parallel_tool_calls`` whether it may call several at once.
    ``response_format`` constrains the answer to JSON (a schema's, or any object). ``adapter``: the LoRA adapter
    to generate with (None: the base model); rows with different adapters, and rows with none, may share a batch."""

    _newer = (
        "prompt_token_ids", "echo", "tools", "tool_choice", "parallel_tool_calls", "response_format", "adapter"
    )  # fmt: skip

    id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)
    prompt: str | None = None
    prompt_token_ids: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(None, min_length=1)
    messages: tuple[ChatMessage, ...] | None = None
    params: SamplingParams = SamplingParams()
    stream: bool = False
    echo: bool = False
    tools: tuple[Tool, ...] = Field((), max_length=MAX_TOOLS)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    adapter: AdapterRef | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationRequest:
        given = [self.prompt is not None, self.prompt_token_ids is not None, self.messages is not None]
        if sum(given) != 1:
            raise ValueError("exactly one of 'prompt', 'prompt_token_ids' and 'messages' must be given")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        if self.echo and self.messages is not None:
            raise ValueError("'echo' applies to plain prompts only")
        if (self.tools or self.response_format is not None) and self.messages is None:
            raise ValueError("'tools' and 'response_format' apply to chat messages only")
        return self

    @model_validator(mode="after")
    def _tool_choice_among_tools(self) -> GenerationRequest:
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        if isinstance(self.tool_choice, ForcedTool) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.name!r}, which is not among the tools")
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may contain tool calls (to be parsed out of the text)."""
        return bool(self.tools) and self.tool_choice != "none"


class BatchRequest(_Wire):
    #: The base model's name, also for rows generated with an adapter (``GenerationRequest.adapter``).
    model: str = Field(min_length=1)
    requests: tuple[GenerationRequest, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> BatchRequest:
        ids = [r.id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids in a batch must be unique")
        return self


class Usage(_Wire):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class TopLogprob(_Wire):
    """A candidate token at one position: its text (``bytes:\\xNN...`` where its bytes are not whole UTF-8
    characters), its bytes, and its log-probability."""

    token: str
    bytes: tuple[int, ...]
    logprob: float


class TokenLogprob(_Wire):
    """A token of the text, like ``TopLogprob``, and (``logprobs`` k) the k most likely tokens at its position. An
    echoed prompt's first token has ``logprob`` None (nothing came before it) and no alternatives."""

    token: str
    bytes: tuple[int, ...]
    logprob: float | None
    top_logprobs: tuple[TopLogprob, ...] = ()


class TokenEvent(_Evolving):
    """New text for a streaming request, to be appended to what came before; with ``logprobs`` asked for, the
    entries of the tokens this text completes (appended likewise; they may come in a later event than their
    text's first characters, but never before). ``tool_calls``: calls the model finished writing since the last
    event, whole, to be appended to those before (a call's markup is never part of ``text``)."""

    _newer = ("logprobs", "tool_calls")

    type: Literal["token"] = "token"
    id: str
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()


class FinishEvent(_Evolving):
    """A request is done: its whole text (stop sequences removed; with ``echo``, the prompt first), why it stopped,
    and its token counts. ``logprobs`` (None unless asked for) lines up one to one with the tokens of ``text``
    (an end-of-sequence token is not one of them; a token that completed a stop sequence is, if some of its text
    is part of ``text``): their ``bytes`` concatenate to the text, up to how the tokenizer joins tokens.

    A request with tools whose answer holds tool calls has them in ``tool_calls`` (ids unique within the request,
    the same on a redelivery) and ``finish_reason`` ``tool_calls``; ``text`` is then what the model wrote outside
    the calls' markup (often empty), and ``logprobs`` still has every generated token, markup included."""

    _newer = ("logprobs", "tool_calls")

    type: Literal["finish"] = "finish"
    id: str
    text: str
    finish_reason: Literal["stop", "length", "tool_calls"]
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class ErrorEvent(_Wire):
    """A request could not be served. ``invalid_request`` is the client's fault (e.g. prompt longer than the
    model's context) and is not retried; ``adapter_invalid``: its adapter cannot be used (missing files, not a PEFT
    LoRA, a rank or a target the base does not allow), not retried either, the batch's other rows unaffected;
    ``internal`` is the runtime's; ``cancelled`` answers ``POST /v1/cancel`` (nobody waits for the request any
    more, so it must not be retried either)."""

    type: Literal["error"] = "error"
    id: str
    code: Literal["invalid_request", "adapter_invalid", "internal", "cancelled"]
    message: str


BatchEvent = Annotated[TokenEvent | FinishEvent | ErrorEvent, Field(discriminator="type")]


#: Parses one NDJSON line of a batch response: ``BatchEventAdapter.validate_json(line)``.
BatchEventAdapter: TypeAdapter[TokenEvent | FinishEvent | ErrorEvent] = TypeAdapter(BatchEvent)
