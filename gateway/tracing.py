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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import ConfigError

_PROPAGATOR = TraceContextTextMapPropagator()
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()
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
        parent = _PROPAGATOR.extract(headers)
        with self._tracer.start_as_current_span(name, parent, SpanKind.SERVER, attributes=attributes) as span:
            yield span

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
        """A child of the current span, current while the block runs; nothing when off."""
        if self._tracer is None:
            return _OFF
        return self._tracer.start_as_current_span(name, attributes=attributes)

    def traceparent(self) -> str | None:
        """The current span's W3C ``traceparent`` (None when off or outside a span)."""
        if self._tracer is None:
            return None
        return traceparent_of(trace.get_current_span())

    def recorded(
        self,
        name: str,
        *,
        parent: Span | str,
        start_s: float,
        end_s: float,
        attributes: Mapping[str, Any],
        events: Sequence[tuple[str, float, Mapping[str, Any]]] = (),
    ) -> Span | None:
        """A span that already happened (``start_s``, ``end_s``: Unix times), with ``events`` (name, Unix time,
        attributes), under ``parent`` (a span, or a ``traceparent``); None when off."""
        if self._tracer is None:
            return None
        span = self._tracer.start_span(name, _context(parent), attributes=attributes, start_time=_ns(start_s))
        for event, at_s, event_attributes in events:
            span.add_event(event, event_attributes, timestamp=_ns(max(start_s, min(end_s, at_s))))
        span.end(end_time=_ns(end_s))
        return span

    def started(self, name: str, *, parent: str, attributes: Mapping[str, Any]) -> Span | None:
        """A client span begun now under ``parent`` (a ``traceparent``), to be ended by the caller."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(name, _context(parent), SpanKind.CLIENT, attributes=attributes)


def _context(parent: Span | str) -> otel_context.Context:
    if isinstance(parent, str):
        return _PROPAGATOR.extract({"traceparent": parent})
    return trace.set_span_in_context(parent)


def traceparent_of(span: Span) -> str | None:
    """``span``'s W3C ``traceparent``, or None for an invalid (non-recording, no-op) span."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


OFF = Tracing()
