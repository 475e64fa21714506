"""The wire format between the kaltstart gateway and a model runtime: the one thing they share.

The gateway and the runtime never import each other. A dispatcher sends one ``BatchRequest`` as JSON in the body
of ``POST /v1/batch``; the runtime answers ``200`` with ``application/x-ndjson``: one ``BatchEvent`` per line, in
the order they happen. Each request in the batch ends with exactly one ``FinishEvent`` or ``ErrorEvent``; requests
with ``stream`` set also get ``TokenEvent`` deltas before that, whose texts concatenate to the finished text.
A runtime that cannot take the batch at all answers a non-200 status with an ``ErrorBody``.

``POST /v1/cancel`` with a ``CancelRequest`` stops single requests of running or queued batches (a client left):
each one the ``CancelResponse`` names ends its batch stream with an ``ErrorEvent`` of code ``cancelled``, while
the rest of its batch goes on. Unknown ids are ignored, as the request may have finished already.

A runtime may also *announce* itself on the Redis pub/sub channel ``REPLICAS_CHANNEL`` (``Announcement``): while it
starts (which phase), the moment it is ready (with its ``ReadyBody``), every ``interval_s`` after that, and when it
stops, so a gateway dispatches to it at once instead of at its next readiness probe. A *standby* runtime (process
up, engine imported, no model yet) takes its model from ``POST /v1/claim`` (``ClaimRequest``).

``GET /readyz`` answers 200 with a ``ReadyBody`` only once weights are loaded and warmed up; ``GET /healthz``
answers 200 while the process is alive. The ``ReadyBody`` and the ``x-kaltstart-free-rows`` header of each
``POST /v1/batch`` answer say how much more a replica can take: a *continuous* replica (step-level scheduler) takes
new requests into its running batch, a *static* one runs one batch at a time. See docs/wire-format.md for the
prose version and the JSON schema.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "BATCH_PATH",
    "CANCEL_PATH",
    "CLAIM_PATH",
    "FREE_ROWS_HEADER",
    "HEALTH_PATH",
    "MAX_CANCEL_IDS",
    "MAX_LOGIT_BIAS",
    "MAX_LOGPROBS",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_TOOLS",
    "NDJSON",
    "READY_PATH",
    "REPLICAS_CHANNEL",
    "Announcement",
    "BatchEvent",
    "BatchEventAdapter",
    "BatchRequest",
    "CancelRequest",
    "CancelResponse",
    "ChatMessage",
    "ClaimRequest",
    "ErrorBody",
    "ErrorEvent",
    "FinishEvent",
    "ForcedTool",
    "FunctionCall",
    "FunctionDefinition",
    "GenerationRequest",
    "ReadyBody",
    "ReplicaState",
    "ResponseFormat",
    "SamplingParams",
    "SchedulerKind",
    "StartupPhase",
    "StartupTimings",
    "TokenEvent",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "TopLogprob",
    "Usage",
    "json_schema",
]

BATCH_PATH = "/v1/batch"
CANCEL_PATH = "/v1/cancel"
CLAIM_PATH = "/v1/claim"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
NDJSON = "application/x-ndjson"
#: Response header of ``POST /v1/batch`` (every answer once the replica is ready): how many more requests (rows) the
#: replica could take right after it took this batch. Always 0 on a static replica while it holds a batch.
FREE_ROWS_HEADER = "x-kaltstart-free-rows"

#: Redis pub/sub channel on which runtimes announce themselves (``Announcement`` as JSON).
REPLICAS_CHANNEL = "kaltstart:replicas"

MAX_STOP_SEQUENCES = 4
MAX_REQUEST_ID_LENGTH = 128
#: Most ids one ``CancelRequest`` may carry: far more than any batch, small enough to bound the work one call does.
MAX_CANCEL_IDS = 1024
#: Most alternatives ``SamplingParams.logprobs`` may ask for per token (OpenAI's ``top_logprobs`` limit).
MAX_LOGPROBS = 20
#: Most tokens one ``SamplingParams.logit_bias`` may name.
MAX_LOGIT_BIAS = 300
#: Most tools one request may declare (OpenAI's limit).
MAX_TOOLS = 128


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Evolving(_Wire):
    """A model that gained fields (``_newer``) after peers that read it were deployed. Those fields are left out of
    its JSON while they hold their defaults, so a peer that predates them (its models forbid unknown fields) still
    reads everything that does not use them: a request without logprobs, say, during a rolling update."""

    _newer: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unused_newer_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self._newer:
                if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                    data.pop(name, None)
        return data


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
    stop: tuple[str, ...] = Field((), max_length=MAX_STOP_SEQUENCES)
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


class GenerationRequest(_Evolving):
    """One request in a batch: a plain ``prompt`` (text), a ``prompt_token_ids`` (token ids, used as they are), or
    chat ``messages``: exactly one. ``echo`` (plain prompts only) puts the prompt before the generated text, and
    with ``params.logprobs`` the prompt tokens' log-probabilities (the first one null) before the generated ones.

    Chat requests only: ``tools`` are declared to the model through its chat template; ``tool_choice`` says
    whether it may, must or must not call them; ``parallel_tool_calls`` whether it may call several at once.
    ``response_format`` constrains the answer to JSON (a schema's, or any object)."""

    _newer = ("prompt_token_ids", "echo", "tools", "tool_choice", "parallel_tool_calls", "response_format")

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
    model's context) and is not retried; ``internal`` is the runtime's; ``cancelled`` answers ``POST /v1/cancel``
    (nobody waits for the request any more, so it must not be retried either)."""

    type: Literal["error"] = "error"
    id: str
    code: Literal["invalid_request", "internal", "cancelled"]
    message: str


BatchEvent = Annotated[TokenEvent | FinishEvent | ErrorEvent, Field(discriminator="type")]


#: How a replica schedules work: ``static`` runs one ``POST /v1/batch`` at a time, start to finish (further batches
#: wait); ``continuous`` admits the requests of any open batch into its running batch between decoding steps.
SchedulerKind = Literal["static", "continuous"]


class StartupTimings(_Wire):
    """Where a replica's cold start went, in seconds, phase by phase in the order they ran. ``process_s`` is from
    the operating system starting the process until loading began (interpreter, server imports, binding the port);
    None where it cannot be told. ``total_s`` is from that start (or, without it, from when loading began) until
    the replica was ready."""

    process_s: float | None = Field(None, ge=0.0, description="process start until loading began; None: unknown")
    cache_s: float = Field(ge=0.0, description="finding or filling the node-local weight cache")
    imports_s: float = Field(ge=0.0, description="importing the engine (torch, transformers)")
    load_s: float = Field(ge=0.0, description="loading weights and tokenizer onto the device")
    warmup_s: float = Field(ge=0.0, description="the warm-up generation (0 without --warmup)")
    total_s: float = Field(ge=0.0, description="process start (or loading start) until ready")
    standby: bool = Field(
        False,
        description="a standby runtime took this model: process_s and imports_s were paid before the claim, and "
        "total_s runs from the claim",
    )


class ReadyBody(_Wire):
    """A ready replica's report. ``scheduler``, ``max_batch_tokens``, ``free_rows`` and ``startup`` came later; their
    defaults describe a replica that predates them: one batch at a time, no token budget, no start-up timings."""

    status: Literal["ready"] = "ready"
    model: str
    max_batch_size: int = Field(ge=1)
    context_length: int = Field(ge=1)
    scheduler: SchedulerKind = Field(
        "static",
        description="static: one POST /v1/batch at a time, start to finish; continuous: requests of any open batch "
        "join the running batch between decoding steps",
    )
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="most KV-cache tokens the running batch may hold, counted as rows times the longest row's "
        "prompt + max_tokens; a request that does not fit waits for room. 0: no token budget (static)",
    )
    free_rows: int = Field(
        0,
        ge=0,
        description="requests the replica can take now: max_batch_size minus the requests it holds, running or "
        "waiting; 0 on a static replica while it holds a batch",
    )
    startup: StartupTimings | None = Field(
        None, description="where the cold start went (seconds per phase); None: not reported"
    )


class ErrorBody(_Wire):
    error: str


#: Where a replica stands: starting (phase says which step), ready to serve, or going away.
ReplicaState = Literal["starting", "ready", "stopping"]
#: The steps of a start, in order: ``standby`` (up, engine imported, waiting for ``POST /v1/claim``), ``cache``
#: (finding or filling the weight cache), ``imports``, ``load`` (weights and tokenizer) and ``warmup``.
StartupPhase = Literal["standby", "cache", "imports", "load", "warmup"]


class Announcement(_Wire):
    """A runtime replica's word about itself on ``REPLICAS_CHANNEL``. A gateway uses it only for a replica it can
    vouch for (one it started, or an address in the model's EndpointSlices), and forgets it when no announcement
    came for a few ``interval_s``."""

    url: str = Field(min_length=1, max_length=256, description="base URL the gateway sends batches to")
    models: tuple[str, ...] = Field(description="every model name the replica serves; empty while on standby")
    state: ReplicaState
    phase: StartupPhase | None = Field(None, description="while starting: the step under way")
    elapsed_s: float = Field(
        ge=0.0, description="seconds since the process started (or, on a standby, since its claim)"
    )
    interval_s: float = Field(gt=0.0, description="the next announcement comes within this many seconds")
    ready: ReadyBody | None = Field(None, description="the replica's ready report, when state is ready")


class ClaimRequest(_Wire):
    """Body of ``POST /v1/claim`` to a standby runtime: the flags (``python -m runtime --help``) it would have
    been started with for its model, without ``--host``/``--port`` (it keeps its own). Answered 202 and loading
    starts; 409 if it was claimed before, 422 if the flags are invalid."""

    args: tuple[Annotated[str, Field(max_length=4096)], ...] = Field(max_length=256)


class CancelRequest(_Wire):
    """Body of ``POST /v1/cancel``: ids of requests (``GenerationRequest.id``) to stop, in any batch."""

    ids: tuple[Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_ID_LENGTH)], ...] = Field(
        min_length=1, max_length=MAX_CANCEL_IDS
    )


class CancelResponse(_Wire):
    """The ids that were running or queued on this replica and are now cancelled, each once: exactly these get
    the ``cancelled`` error event. Ids the replica does not hold (finished, or never seen) are left out."""

    cancelled: tuple[str, ...]


#: Parses one NDJSON line of a batch response: ``BatchEventAdapter.validate_json(line)``.
BatchEventAdapter: TypeAdapter[TokenEvent | FinishEvent | ErrorEvent] = TypeAdapter(BatchEvent)


def json_schema() -> dict[str, object]:
    """The wire format as JSON Schema: docs/wire-format.schema.json is this, written out (and tested so)."""
    return {
        "title": "kaltstart runtime wire format",
        "batch_request": BatchRequest.model_json_schema(),
        "batch_event": BatchEventAdapter.json_schema(),
        "ready_body": ReadyBody.model_json_schema(),
        "error_body": ErrorBody.model_json_schema(),
        "cancel_request": CancelRequest.model_json_schema(),
        "cancel_response": CancelResponse.model_json_schema(),
        "announcement": Announcement.model_json_schema(),
        "claim_request": ClaimRequest.model_json_schema(),
    }
