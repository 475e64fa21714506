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

The models live in ``wire.batch`` (``POST /v1/batch``: requests and events), ``wire.replica`` (``/readyz``,
announcements, claims, cancellations) and ``wire.base`` (base models, limits); import them from ``wire``.
"""

from __future__ import annotations

from wire.base import (
    MAX_ADAPTER_SOURCE_LENGTH,
    MAX_ANNOUNCE_INTERVAL_S,
    MAX_ANNOUNCED_MODELS,
    MAX_ANNOUNCEMENT_BYTES,
    MAX_CANCEL_IDS,
    MAX_LOADED_ADAPTERS,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_MODEL_NAME_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
    REQUEST_ID_PATTERN,
    ModelName,
    traceparent_sampled,
)
from wire.batch import (
    AdapterRef,
    BatchEvent,
    BatchEventAdapter,
    BatchRequest,
    ChatMessage,
    ErrorEvent,
    FinishEvent,
    ForcedTool,
    FunctionCall,
    FunctionDefinition,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
    TopLogprob,
    Usage,
)
from wire.replica import (
    ADAPTERS_HEADER,
    POOL_ACTIVE_HEADER,
    POOL_FREE_BYTES_HEADER,
    POOL_PARKED_HEADER,
    Announcement,
    CancelRequest,
    CancelResponse,
    ClaimRequest,
    ErrorBody,
    ModelState,
    PoolModel,
    PoolMoveRequest,
    PoolMoveResponse,
    PoolReport,
    ReadyBody,
    ReplicaState,
    Residency,
    SchedulerKind,
    StartupPhase,
    StartupTimings,
    adapters_from_header,
    adapters_header,
)

__all__ = [
    "ADAPTERS_HEADER",
    "BATCH_PATH",
    "CANCEL_PATH",
    "CLAIM_PATH",
    "FREE_ROWS_HEADER",
    "HEALTH_PATH",
    "MAX_ADAPTER_SOURCE_LENGTH",
    "MAX_ANNOUNCED_MODELS",
    "MAX_ANNOUNCEMENT_BYTES",
    "MAX_ANNOUNCE_INTERVAL_S",
    "MAX_CANCEL_IDS",
    "MAX_LOADED_ADAPTERS",
    "MAX_LOGIT_BIAS",
    "MAX_LOGPROBS",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOOLS",
    "NDJSON",
    "POOL_ACTIVE_HEADER",
    "POOL_FREE_BYTES_HEADER",
    "POOL_PARKED_HEADER",
    "POOL_PARK_PATH",
    "POOL_UNLOAD_PATH",
    "READY_PATH",
    "REPLICAS_CHANNEL",
    "REQUEST_ID_PATTERN",
    "AdapterRef",
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
    "ModelName",
    "ModelState",
    "PoolModel",
    "PoolMoveRequest",
    "PoolMoveResponse",
    "PoolReport",
    "ReadyBody",
    "ReplicaState",
    "Residency",
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
    "adapters_from_header",
    "adapters_header",
    "json_schema",
    "traceparent_sampled",
]

BATCH_PATH = "/v1/batch"
CANCEL_PATH = "/v1/cancel"
CLAIM_PATH = "/v1/claim"
#: A pool runtime's moves on the gateway's word (``PoolMoveRequest``): active -> parked, and active or parked -> absent.
POOL_PARK_PATH = "/v1/pool/park"
POOL_UNLOAD_PATH = "/v1/pool/unload"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
NDJSON = "application/x-ndjson"
#: Response header of ``POST /v1/batch`` (every answer once the replica is ready): how many more requests (rows) the
#: replica could take right after it took this batch. Always 0 on a static replica while it holds a batch.
FREE_ROWS_HEADER = "x-kaltstart-free-rows"

#: Redis pub/sub channel on which runtimes announce themselves (``Announcement`` as JSON).
REPLICAS_CHANNEL = "kaltstart:replicas"


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
        "pool_move_request": PoolMoveRequest.model_json_schema(),
        "pool_move_response": PoolMoveResponse.model_json_schema(),
    }
