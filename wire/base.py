"""The wire format's base models and the limits its fields are checked against (see ``wire``)."""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

MAX_STOP_SEQUENCES = 4
#: Longest a stop sequence may be, in characters: the runtime looks for every proper prefix of every stop sequence at
#: the end of a row's text on every step (``runtime.output.completion.holdback_start``), so this bounds that work.
MAX_STOP_LENGTH = 256
MAX_REQUEST_ID_LENGTH = 128
#: A client's request id (``GenerationRequest.request_id``): safe in a header, a log line and JSON.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:@+=/-]+$"
#: A W3C ``traceparent``: version, trace id, parent id, flags (a later version may append fields).
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[0-9a-zA-Z-]*)?$"
MAX_TRACEPARENT_LENGTH = 256


def traceparent_sampled(traceparent: str) -> bool:
    """Whether a ``traceparent`` (one that matches ``TRACEPARENT_PATTERN``) has its sampled flag set: its trace is
    recorded. Read where spans would be made for it, so that an unsampled request costs next to nothing."""
    return bool(int(traceparent[53:55], 16) & 1)


#: Most ids one ``CancelRequest`` may carry: far more than any batch, small enough to bound the work one call does.
MAX_CANCEL_IDS = 1024
#: Most alternatives ``SamplingParams.logprobs`` may ask for per token (OpenAI's ``top_logprobs`` limit).
MAX_LOGPROBS = 20
#: Most tokens one ``SamplingParams.logit_bias`` may name.
MAX_LOGIT_BIAS = 300
#: Most tools one request may declare (OpenAI's limit).
MAX_TOOLS = 128
#: Longest model name (the gateway's ``check_model_name`` allows 128 characters).
MAX_MODEL_NAME_LENGTH = 128
#: Most model names one replica may announce (or report at ``/readyz``): one Deployment's aliases, not a catalog.
MAX_ANNOUNCED_MODELS = 32
#: Longest announcement a gateway reads, in bytes of JSON: a full one (a ready report with start-up timings and
#: ``MAX_ANNOUNCED_MODELS`` long names) is under 6 KiB. Anything longer is dropped unread.
MAX_ANNOUNCEMENT_BYTES = 8192
#: Longest announced interval, in seconds: a replica that goes quiet is forgotten after three of them, so this
#: bounds how long one announcement can keep a replica listed.
MAX_ANNOUNCE_INTERVAL_S = 60.0
#: Longest LoRA adapter source (a directory or ``org/repo[@rev]``), in characters.
MAX_ADAPTER_SOURCE_LENGTH = 1024
#: Most adapters one replica may report loaded (``ReadyBody.adapters``, the batch answer's adapters header): a
#: runtime's ``--max-adapters`` is bounded by it.
MAX_LOADED_ADAPTERS = 64

#: A model name as a replica reports it (or a client calls an adapter).
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)]


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
            for name, default in _newer_defaults(type(self)).items():
                if getattr(self, name) == default:
                    data.pop(name, None)
        return data


@functools.cache
def _newer_defaults(cls: type[_Evolving]) -> dict[str, Any]:
    """The defaults of a model's newer fields, computed once per class (this runs for every message sent)."""
    return {name: cls.model_fields[name].get_default(call_default_factory=True) for name in cls._newer}
