"""What a replica says about itself (``/readyz``, announcements on Redis), how a standby is claimed, and how single
requests are cancelled (see ``wire``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import (
    Field,
)

from wire.base import (
    MAX_ANNOUNCE_INTERVAL_S,
    MAX_ANNOUNCED_MODELS,
    MAX_CANCEL_IDS,
    MAX_MODEL_NAME_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    _Evolving,
    _Wire,
)

#: A model name as a replica reports it.
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)]
#: A replica's base URL: http(s), a host and port, no credentials, query or fragment.
_BASE_URL = r"^https?://[^\s/?#@]+(/[^\s?#@]*)?$"

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


#: Where a pool runtime's model is: ``active`` (weights on the device, can run), ``parked`` (weights in host memory,
#: pinned on a GPU; woken by a copy), ``absent`` (only in the node-local cache on disk; loaded by a read).
ModelState = Literal["active", "parked", "absent"]


class PoolModel(_Evolving):
    """One model of a pool runtime as its ``/readyz`` reports it. The counts and seconds are cumulative over the
    runtime process's life (a gateway turns them into counters, ``gateway.replicas.poolmetrics``); the seconds came
    later and are left out of the JSON while 0."""

    _newer: ClassVar[tuple[str, ...]] = ("load_s", "wake_s", "park_s", "unload_s")

    state: ModelState
    weight_bytes: int = Field(
        ge=0, description="its weights' size on the device (estimated from the checkpoint until first loaded)"
    )
    open_requests: int = Field(0, ge=0, description="requests it holds now, running or waiting (active only)")
    loads: int = Field(0, ge=0, description="times loaded from the node-local cache (absent -> active)")
    wakes: int = Field(0, ge=0, description="times woken from host memory (parked -> active)")
    parks: int = Field(0, ge=0, description="times parked (active -> parked)")
    unloads: int = Field(0, ge=0, description="times dropped to the disk cache (active or parked -> absent)")
    load_s: float = Field(0.0, ge=0.0, description="seconds its loads took, summed")
    wake_s: float = Field(0.0, ge=0.0, description="seconds its wakes took, summed")
    park_s: float = Field(0.0, ge=0.0, description="seconds its parks took, summed")
    unload_s: float = Field(0.0, ge=0.0, description="seconds its unloads took, summed")


class PoolReport(_Wire):
    """A pool runtime's memory and models: what a gateway routes by (a model active here beats one parked here,
    which beats one absent)."""

    device_bytes: int = Field(ge=0, description="weight bytes of the active models")
    device_budget_bytes: int = Field(ge=1, description="most weight bytes active at once")
    host_bytes: int = Field(ge=0, description="weight bytes of the parked models")
    host_budget_bytes: int = Field(ge=0, description="most weight bytes parked at once")
    models: dict[ModelName, PoolModel] = Field(max_length=MAX_ANNOUNCED_MODELS)


#: Response headers of a pool runtime's ``POST /v1/batch`` answer (``Residency``): its active and its parked models
#: (comma-separated names) and its free device bytes, as they stand once the batch was taken.
POOL_ACTIVE_HEADER = "x-kaltstart-pool-active"
POOL_PARKED_HEADER = "x-kaltstart-pool-parked"
POOL_FREE_BYTES_HEADER = "x-kaltstart-pool-free-bytes"
#: Response header of a ``POST /v1/batch`` answer: the LoRA adapters loaded on the device once the batch was taken
#: (comma-separated model names), like ``ReadyBody.adapters``.
ADAPTERS_HEADER = "x-kaltstart-adapters"


class Residency(_Wire):
    """Where a pool runtime holds its models, in short: what a gateway routes by (a model active on a replica beats
    one parked there, which beats one absent; among replicas where it is absent, the most free device bytes). Sent
    as headers with every batch answer of a pool runtime, so the gateway's view follows each batch at no extra
    call; also read from a ``PoolReport``. Model names are not comma-free in general, but a pool's are (the runtime
    refuses a comma in them)."""

    active: tuple[ModelName, ...] = Field((), max_length=MAX_ANNOUNCED_MODELS)
    parked: tuple[ModelName, ...] = Field((), max_length=MAX_ANNOUNCED_MODELS)
    free_device_bytes: int = Field(0, ge=0, description="device budget minus the active models' weight bytes")

    @classmethod
    def of(cls, report: PoolReport) -> Residency:
        names = report.models.items()
        return cls(
            active=tuple(name for name, m in names if m.state == "active"),
            parked=tuple(name for name, m in names if m.state == "parked"),
            free_device_bytes=max(0, report.device_budget_bytes - report.device_bytes),
        )

    def headers(self) -> dict[str, str]:
        return {
            POOL_ACTIVE_HEADER: ",".join(self.active),
            POOL_PARKED_HEADER: ",".join(self.parked),
            POOL_FREE_BYTES_HEADER: str(self.free_device_bytes),
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Residency | None:
        """The residency a batch answer's headers carry; None if they carry none (not a pool runtime) or cannot be
        read (too many names, a name too long, not a number): the gateway then keeps what it knew."""
        free = headers.get(POOL_FREE_BYTES_HEADER)
        if free is None:
            return None
        try:
            return cls(
                active=_names(headers.get(POOL_ACTIVE_HEADER, "")),
                parked=_names(headers.get(POOL_PARKED_HEADER, "")),
                free_device_bytes=int(free),
            )
        except ValueError:  # pydantic's ValidationError is one
            return None

    def state(self, model: str) -> ModelState:
        return "active" if model in self.active else "parked" if model in self.parked else "absent"


class PoolMoveRequest(_Wire):
    """Body of ``POST /v1/pool/park`` and ``POST /v1/pool/unload`` to a pool runtime (the gateway's three-state
    keep-alive): take ``model`` off the device into host memory (park), or to disk (unload). Answered 200 with a
    ``PoolMoveResponse`` (and the ``Residency`` headers of a batch answer); 409 while the model holds requests, a
    batch waits for it or the pool is moving models (try later: a busy model is never moved); 404 for a model the
    pool does not serve, or a runtime that is not a pool. A model already there, or further (park of an absent one),
    stays where it is: the call is idempotent."""

    model: ModelName


class PoolMoveResponse(_Wire):
    """Where the model is once the move is done (or was already)."""

    model: ModelName
    state: ModelState


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


class ReadyBody(_Evolving):
    """A ready replica's report. ``scheduler``, ``max_batch_tokens``, ``free_rows``, ``startup``, ``models``,
    ``pool`` and ``adapters`` came later; their defaults describe a replica that predates them: one batch at a
    time, no token budget, no start-up timings, one model name, no pool, no adapters. ``models``, ``pool`` and
    ``adapters`` are left out of the JSON while empty, so a replica that does not use them answers a gateway that
    predates them."""

    _newer: ClassVar[tuple[str, ...]] = ("models", "pool", "adapters")

    status: Literal["ready"] = "ready"
    model: ModelName = Field(description="the model the replica serves (its first name)")
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
    models: tuple[ModelName, ...] = Field(
        (),
        max_length=MAX_ANNOUNCED_MODELS,
        description="every name the replica serves, when more than one (``model`` first); empty: ``model`` only",
    )
    pool: PoolReport | None = Field(
        None, description="a pool runtime (several models, loaded on demand): each model's state and memory"
    )
    adapters: tuple[ModelName, ...] = Field(
        (),
        description="the LoRA adapters loaded on the device now (by their model names): a gateway prefers this "
        "replica for their requests",
    )

    def serves(self, model: str) -> bool:
        """Whether the replica answering this report serves ``model`` (under any of its names)."""
        return model == self.model or model in self.models


class ErrorBody(_Wire):
    error: str


#: Where a replica stands: starting (phase says which step), ready to serve, or going away.
ReplicaState = Literal["starting", "ready", "stopping"]
#: The steps of a start, in order: ``standby`` (up, engine imported, waiting for ``POST /v1/claim``), ``cache``
#: (finding or filling the weight cache), ``imports``, ``load`` (weights and tokenizer) and ``warmup``.
StartupPhase = Literal["standby", "cache", "imports", "load", "warmup"]


class Announcement(_Wire):
    """A runtime replica's word about itself on ``REPLICAS_CHANNEL``. A gateway uses it only for a replica it can
    vouch for (one it started, or an address in the model's EndpointSlices), believes ``ready`` and ``stopping``
    only once the replica's own ``/readyz`` agrees, and forgets it when no announcement came for a few
    ``interval_s``. Longer than ``MAX_ANNOUNCEMENT_BYTES`` in JSON, it is not read at all."""

    url: str = Field(
        min_length=1, max_length=256, pattern=_BASE_URL, description="base URL the gateway sends batches to"
    )
    models: tuple[ModelName, ...] = Field(
        max_length=MAX_ANNOUNCED_MODELS, description="every model name the replica serves; empty while on standby"
    )
    state: ReplicaState
    phase: StartupPhase | None = Field(None, description="while starting: the step under way")
    elapsed_s: float = Field(
        ge=0.0, description="seconds since the process started (or, on a standby, since its claim)"
    )
    interval_s: float = Field(
        gt=0.0, le=MAX_ANNOUNCE_INTERVAL_S, description="the next announcement comes within this many seconds"
    )
    ready: ReadyBody | None = Field(
        None,
        description="the replica's ready report, when state is ready; a gateway uses only the one it reads from "
        "the replica's /readyz itself",
    )


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
