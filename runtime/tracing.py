"""The runtime's spans: one generation span per request of a batch, under the gateway's dispatch span.

Off unless the standard variables ask for traces, as in the gateway (``gateway.tracing``, which the runtime may not
import): ``OTEL_TRACES_EXPORTER`` other than ``none``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` wins. ``configure`` runs once in ``main``; off,
``spans_for`` returns None and a batch costs one ``is None`` test per event.

A request's span (``{gen_ai.operation.name} {model}``, kind client, as the OpenTelemetry GenAI conventions name an
inference span) runs from the moment this runtime took its batch until its final event, with the GenAI attributes
(``gen_ai.request.*``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.response.finish_reasons``). A streamed request also gets ``prefill`` (taken until its first token) and
``decode`` (first token until its end) children and a ``gen_ai.first_token`` event; a request that is not streamed
has no token events to time them by, so its span has neither.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.engine.interface import BatchEvent
from wire import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent, traceparent_sampled

__all__ = ["GenerationSpans", "configure", "shutdown", "spans_for", "wanted"]

_PROPAGATOR = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"provider": None, "tracer": None}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # "otlp", and anything unknown: the runtime starts rather than refuse over a tracer


def configure(environ: Mapping[str, str], provider: TracerProvider | None = None) -> None:
    """Trace this process's generations as ``environ`` asks (or into ``provider``: tests)."""
    if provider is None and wanted(environ):
        names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "kaltstart-runtime"})
        provider = TracerProvider(resource=resource)
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    _state["provider"] = provider
    _state["tracer"] = provider.get_tracer("kaltstart.runtime") if provider is not None else None


def shutdown() -> None:
    """Export what is buffered (at the process's end)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()


def spans_for(model: str, requests: Sequence[GenerationRequest]) -> GenerationSpans | None:
    """The generation spans of a batch just taken; None when tracing is off."""
    tracer: Tracer | None = _state["tracer"]
    return None if tracer is None else GenerationSpans(tracer, model, requests)


def _operation(request: GenerationRequest) -> str:
    return "chat" if request.messages is not None else "text_completion"


def _attributes(model: str, request: GenerationRequest) -> dict[str, Any]:
    params = request.params
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _operation(request),
        "gen_ai.provider.name": "kaltstart",
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": params.temperature,
        "gen_ai.request.top_p": params.top_p,
        "gen_ai.request.stream": request.stream,
        "kaltstart.choice_id": request.id,
    }
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    if request.request_id:
        attributes["kaltstart.request_id"] = request.request_id
    return attributes


class GenerationSpans:
    """The spans of one batch's requests; ``saw`` is called with each event on its way out (event loop)."""

    def __init__(self, tracer: Tracer, model: str, requests: Sequence[GenerationRequest]) -> None:
        self._tracer = tracer
        self._spans: dict[str, Span] = {}
        self._decoding: dict[str, Span] = {}
        self._prefill: dict[str, Span] = {}
        for request in requests:
            if request.traceparent is not None and not traceparent_sampled(request.traceparent):
                continue  # its trace is not recorded: no span, not even a non-recording one
            parent = _PROPAGATOR.extract({"traceparent": request.traceparent}) if request.traceparent else None
            span = tracer.start_span(
                f"{_operation(request)} {model}", parent, SpanKind.CLIENT, attributes=_attributes(model, request)
            )
            self._spans[request.id] = span
            if request.stream:
                self._prefill[request.id] = tracer.start_span("prefill", trace.set_span_in_context(span))

    def saw(self, event: BatchEvent) -> None:
        span = self._spans.get(event.id)
        if span is None:
            return
        if isinstance(event, TokenEvent):
            self._first_token(event.id, span)
            return
        now = time.time_ns()
        self._first_token(event.id, span, now)
        decoding = self._decoding.pop(event.id, None)
        if decoding is not None:
            decoding.end(now)
        if isinstance(event, FinishEvent):
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                    "gen_ai.response.finish_reasons": (event.finish_reason,),
                }
            )
        elif isinstance(event, ErrorEvent):
            span.set_attribute("error.type", event.code)
            if event.code != "cancelled":
                span.set_status(StatusCode.ERROR, event.message)
        span.end(now)
        del self._spans[event.id]

    def _first_token(self, request_id: str, span: Span, now: int | None = None) -> None:
        """The end of a streamed request's prefill: its first token (or its end, if it had none)."""
        prefill = self._prefill.pop(request_id, None)
        if prefill is None:
            return
        at = now or time.time_ns()
        prefill.end(at)
        span.add_event("gen_ai.first_token", timestamp=at)
        if now is None:
            self._decoding[request_id] = self._tracer.start_span(
                "decode", trace.set_span_in_context(span), start_time=at
            )

    def close(self) -> None:
        """End what is still open (the batch's stream ended early)."""
        for span in [*self._prefill.values(), *self._decoding.values(), *self._spans.values()]:
            span.end()
        self._spans.clear()
        self._prefill.clear()
        self._decoding.clear()
