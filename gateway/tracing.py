"""OpenTelemetry traces of a request's way: HTTP request, admission, queue wait, the cold start it waited for,
dispatch; the runtime adds the generation (``runtime.tracing``).

Off unless the standard variables ask for it (``OTEL_TRACES_EXPORTER`` set to other than ``none``, or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set; ``OTEL_SDK_DISABLED=true`` wins). Off,
``Tracing.enabled`` is False and no OpenTelemetry object is made per request: every helper here returns at once.
On, spans go through a ``BatchSpanProcessor`` (``OTEL_BSP_*``) to OTLP/HTTP (``otlp``, the default: the
``OTEL_EXPORTER_OTLP_*`` variables) or ``console``; the resource and sampler come from ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER`` as the SDK reads them.

The trace context crosses processes as a W3C ``traceparent``: from the client's header into the HTTP request's
span, from there into the queued request (``wire.GenerationRequest.traceparent``, stored in Redis with its body),
so whichever gateway replica dispatches it continues the same trace, and from its dispatch span into the batch
sent to the runtime. ``tracestate`` is not carried.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import ConfigError

_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()
#: A version-00 ``traceparent``, the only kind this code writes: parsed here, any other by the propagator.
_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16
#: Attributes of a kaltstart request on its spans.
REQUEST_ID = "kaltstart.request_id"
CHOICE_ID = "kaltstart.choice_id"


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not supported here (use otlp, console or none)")


def provider_from_env(environ: Mapping[str, str], service_name: str) -> TracerProvider | None:
    """A tracer provider exporting as the standard variables say, or None when they ask for no traces."""
    if not wanted(environ):
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or service_name})
    return with_processors(TracerProvider(resource=resource), [BatchSpanProcessor(_exporter(n)) for n in names])


def with_processors(provider: TracerProvider, processors: Sequence[SpanProcessor]) -> TracerProvider:
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _ns(unix_s: float) -> int:
    return int(unix_s * 1e9)


class Tracing:
    """The gateway's tracer, or none (``enabled`` False: every method is a no-op)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("kaltstart.gateway") if provider is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing:
        return cls(provider_from_env(environ, "kaltstart-gateway"))

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Export what is buffered and stop (at the gateway's shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()

    @contextlib.contextmanager
    def server_span(self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Span]:
        """The span of one HTTP request, a child of the client's ``traceparent`` if it sent a valid one; current
        while the block runs."""
        assert self._tracer is not None
        traceparent = headers.get("traceparent")
        if traceparent is None:
            parent = otel_context.Context()
        elif "tracestate" in headers:
            parent = _PROPAGATOR.extract(headers)
        else:
            parent = parent_context(traceparent)
        # Current by attach/detach, not start_as_current_span (whose generator-based context managers cost more).
        with self._tracer.start_span(name, parent, SpanKind.SERVER, attributes=attributes) as span:
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                yield span
            finally:
                otel_context.detach(token)

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
        """A child of the current span, ended (with the exception, if one escapes) when the block ends; nothing
        when off, or when the current span is not recorded (not sampled, or none: the child would not be either,
        the default sampler being parent-based). It is not made current: nothing under it starts spans, and
        attaching it would cost a context switch in and out."""
        if self._tracer is None or not trace.get_current_span().is_recording():
            return _OFF
        return self._tracer.start_span(name, attributes=attributes)

    def traceparent(self) -> str | None:
        """The current span's W3C ``traceparent`` (None when off or outside a span)."""
        if self._tracer is None:
            return None
        return traceparent_of(trace.get_current_span())

    def recorded(
        self,
        name: str,
        *,
        parent: Span | otel_context.Context,
        start_s: float,
        end_s: float,
        attributes: Mapping[str, Any],
        events: Sequence[tuple[str, float, Mapping[str, Any]]] = (),
    ) -> Span | None:
        """A span that already happened (``start_s``, ``end_s``: Unix times), with ``events`` (name, Unix time,
        attributes), under ``parent`` (a span, or a context: ``parent_context``); None when off."""
        if self._tracer is None:
            return None
        span = self._tracer.start_span(name, _context(parent), attributes=attributes, start_time=_ns(start_s))
        for event, at_s, event_attributes in events:
            span.add_event(event, event_attributes, timestamp=_ns(max(start_s, min(end_s, at_s))))
        span.end(end_time=_ns(end_s))
        return span

    def started(self, name: str, *, parent: otel_context.Context, attributes: Mapping[str, Any]) -> Span | None:
        """A client span begun now under ``parent`` (``parent_context``), to be ended by the caller."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(name, parent, SpanKind.CLIENT, attributes=attributes)


def _context(parent: Span | otel_context.Context) -> otel_context.Context:
    if isinstance(parent, otel_context.Context):
        return parent
    return trace.set_span_in_context(parent)


def parent_context(traceparent: str) -> otel_context.Context:
    """The context of a W3C ``traceparent`` (an empty one if it is not valid): a version-00 one parsed here (a
    quarter of the propagator's cost, which matters at two per dispatched request), any other by the propagator."""
    match = _V00.fullmatch(traceparent)
    if match is None:
        return _PROPAGATOR.extract({"traceparent": traceparent})
    trace_id, span_id, flags = match.groups()
    if trace_id == _NO_TRACE or span_id == _NO_SPAN:
        return otel_context.Context()
    remote = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
    return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())


def traceparent_of(span: Span) -> str | None:
    """``span``'s W3C ``traceparent``, or None for an invalid (non-recording, no-op) span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


OFF = Tracing()
