"""What a dispatcher records about each request it hands to a replica: how long of its wait was a cold start (for
the client's ``x-kaltstart-cold-start-ms``), and its spans.

The spans continue the trace the admitting gateway (maybe another replica) began: the request carries that
gateway's HTTP request span as its ``traceparent`` (``gateway.tracing``). Per request: ``kaltstart.queue_wait``
(acceptance until this dispatch, recorded afterwards), under it ``kaltstart.cold_start`` if the request waited for
its replica to become ready (the replica's start until its readiness, its start-up phases as events), and
``kaltstart.dispatch`` (a client span, from now until the request's final event), whose context goes to the runtime
in the batch so that the generation span lies under it. Both carry the request's ids; the model, attempt and the
admitting and dispatching gateways are on the queue wait only. A request whose trace is not sampled (its
``traceparent``'s flags) gets no spans here: it goes to the runtime with the same ``traceparent``, unrecorded there
too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from opentelemetry.trace import Span

import wire
from gateway.queue.stream import Delivery
from gateway.tracing import CHOICE_ID, OFF, REQUEST_ID, Tracing, parent_context, traceparent_of

#: The phases of ``wire.StartupTimings``, in the order they run.
_PHASES = ("process", "cache", "imports", "load", "warmup")


@dataclass(frozen=True)
class ReplicaStart:
    """When the replica a batch goes to became ready (Unix time; None: unknown) and its own account of its start."""

    ready_at: float | None = None
    startup: wire.StartupTimings | None = None

    def waited_ms(self, accepted_at: float) -> int:
        """How long a request accepted at ``accepted_at`` waited for this replica to become ready."""
        if self.ready_at is None or accepted_at >= self.ready_at:
            return 0
        return round((self.ready_at - accepted_at) * 1000)

    def began_at(self, accepted_at: float) -> float:
        """When its start began: by its own account, else (unknown) when the request came."""
        assert self.ready_at is not None
        if self.startup is None:
            return accepted_at
        return self.ready_at - self.startup.total_s

    def phases(self) -> list[tuple[str, float, dict[str, float]]]:
        """Its start-up phases as span events: each at its end (Unix time), with its seconds."""
        if self.startup is None or self.ready_at is None:
            return []
        at = self.ready_at - self.startup.total_s
        events = []
        for phase in _PHASES:
            seconds = getattr(self.startup, f"{phase}_s")
            if seconds is None:
                continue
            at += seconds
            events.append((f"replica.{phase}", at, {"seconds": seconds}))
        return events


UNKNOWN = ReplicaStart()


class DispatchSpans:
    """The spans of one model's dispatches on this gateway replica (nothing at all when tracing is off)."""

    def __init__(self, tracing: Tracing = OFF, *, model: str, gateway_id: str) -> None:
        self._tracing = tracing
        self._model = model
        self._gateway_id = gateway_id
        self._open: dict[str, Span] = {}  # choice id -> its dispatch span

    def sent(self, batch: Sequence[Delivery], url: str, replica: ReplicaStart) -> list[wire.GenerationRequest]:
        """Record the batch's queue waits (and cold starts), open their dispatch spans; the requests to send, each
        with its dispatch span as its ``traceparent`` (as they are when tracing is off)."""
        if not self._tracing.enabled:
            return [cast(wire.GenerationRequest, d.queued.request) for d in batch]
        return [self._sent(d, url, replica) for d in batch]

    def _sent(self, delivery: Delivery, url: str, replica: ReplicaStart) -> wire.GenerationRequest:
        request = delivery.queued.request
        assert isinstance(request, wire.GenerationRequest)
        if request.traceparent is None or not wire.traceparent_sampled(request.traceparent):
            return request  # no trace, or one not recorded: the runtime gets the same context, records nothing
        now, accepted = time.time(), delivery.queued.accepted_at
        parent = parent_context(request.traceparent)  # parsed once for both spans
        ids = {REQUEST_ID: request.request_id or "", CHOICE_ID: request.id}
        waited = self._tracing.recorded(
            "kaltstart.queue_wait",
            parent=parent,
            start_s=accepted,
            end_s=now,
            attributes=ids
            | {
                "gen_ai.request.model": self._model,
                "kaltstart.attempt": delivery.queued.attempt,
                "kaltstart.admitted_by": delivery.queued.gateway,
                "kaltstart.dispatched_by": self._gateway_id,
            },
        )
        if waited is not None and replica.ready_at is not None and replica.waited_ms(accepted):
            self._tracing.recorded(
                "kaltstart.cold_start",
                parent=waited,
                start_s=replica.began_at(accepted),
                end_s=replica.ready_at,
                attributes={"gen_ai.request.model": self._model, "server.address": url},
                events=replica.phases(),
            )
        # The model, attempt and gateways are on its sibling, the queue wait: not twice per request.
        span = self._tracing.started("kaltstart.dispatch", parent=parent, attributes=ids | {"server.address": url})
        if span is None:
            return request
        self._open[request.id] = span
        return request.model_copy(update={"traceparent": traceparent_of(span)})

    def ended(self, request_id: str, outcome: str = "finished") -> None:
        """The request's answer came (or it left this replica: ``outcome`` says how)."""
        span = self._open.pop(request_id, None) if self._open else None
        if span is not None:
            span.set_attribute("kaltstart.outcome", outcome)
            span.end()
