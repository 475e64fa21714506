"""Log lines, request ids and tracing as units (issue #27): their formats, their bounds, and tracing off."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import wire
from gateway import logs
from gateway.api.requestids import request_id_from
from gateway.dispatch.observed import DispatchSpans, ReplicaStart
from gateway.queue.stream import Delivery, QueuedRequest
from gateway.relay.messages import Dispatched, ReplyAdapter
from gateway.tracing import OFF, Tracing, parent_context, traceparent_of, wanted

pytestmark = pytest.mark.unit


def line_of(handler: logging.Handler, stream: io.StringIO, message: str, **extra: object) -> str:
    logger = logging.getLogger("kaltstart.test-observability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().strip()


def test_json_lines_carry_the_request_being_handled_and_extras() -> None:
    stream = io.StringIO()
    token = logs.REQUEST_ID.set("req-1")
    try:
        line = line_of(logs.handler("json", stream), stream, "queued %s", status=200)
    finally:
        logs.REQUEST_ID.reset(token)
    fields = json.loads(line)
    assert fields["message"] == "queued %s"
    assert fields["request_id"] == "req-1"
    assert fields["status"] == 200
    assert fields["level"] == "WARNING"
    assert fields["logger"] == "kaltstart.test-observability"
    assert fields["time"].endswith("Z")


def test_text_lines_end_with_the_request_id_and_an_explicit_one_wins() -> None:
    stream = io.StringIO()
    assert line_of(logs.handler("text", stream), stream, "plain").endswith(": plain")  # no request, no suffix
    stream = io.StringIO()
    token = logs.REQUEST_ID.set("handled")
    try:
        line = line_of(logs.handler("text", stream), stream, "about another", request_id="other")
    finally:
        logs.REQUEST_ID.reset(token)
    assert line.endswith("about another request_id=other")


@pytest.mark.parametrize("raw", ["0f3c-11", "01J9ZK8X3M", "a.b:c@d/e+f=g_h", "x" * 128])
def test_a_valid_client_request_id_is_taken(raw: str) -> None:
    assert request_id_from(raw) == raw
    assert request_id_from(raw.encode()) == raw


@pytest.mark.parametrize("raw", [None, "", "x" * 129, "two words", "new\nline", "é", "a;b", '"quoted"'])
def test_anything_else_gets_a_generated_id(raw: str | None) -> None:
    made = request_id_from(raw)
    assert made != raw
    assert len(made) == 32
    wire.GenerationRequest(id="c", prompt="p", request_id=made)  # whatever is taken, the wire takes


def test_the_wire_bounds_request_ids_and_trace_contexts() -> None:
    with pytest.raises(ValueError):
        wire.GenerationRequest(id="c", prompt="p", request_id="x" * 129)
    with pytest.raises(ValueError):
        wire.GenerationRequest(id="c", prompt="p", traceparent="not a traceparent")
    # Left out of the JSON when unset: a runtime that predates them reads the batch.
    assert "request_id" not in wire.GenerationRequest(id="c", prompt="p").model_dump_json()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_tracing_is_off_unless_asked_for(environ: dict[str, str]) -> None:
    assert not wanted(environ)
    assert not Tracing.from_env(environ).enabled


def test_tracing_is_on_with_an_endpoint_or_an_exporter() -> None:
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert wanted({"OTEL_TRACES_EXPORTER": "console"})
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.enabled
    tracing.shutdown()


def test_off_a_dispatch_sends_the_queued_requests_as_they_are() -> None:
    request = wire.GenerationRequest(id="c", prompt="p", request_id="r", traceparent=f"00-{'1' * 32}-{'2' * 16}-01")
    delivery = Delivery("1-0", QueuedRequest(request=request, reply_to="replies:gw", accepted_at=0.0))
    sent = DispatchSpans(OFF, model="m", gateway_id="gw").sent([delivery], "http://r", ReplicaStart(1.0))
    assert sent[0] is request  # no copy, no span
    assert OFF.traceparent() is None
    assert OFF.span("kaltstart.admission") is OFF.span("kaltstart.admission")  # one shared no-op


def test_cold_start_wait_is_the_wait_for_the_replica_to_become_ready() -> None:
    replica = ReplicaStart(ready_at=100.0)
    assert replica.waited_ms(97.5) == 2500
    assert replica.waited_ms(100.5) == 0  # came after it was ready
    assert ReplicaStart().waited_ms(97.5) == 0  # readiness unknown


def test_a_warm_dispatch_reads_as_before() -> None:
    """A gateway replica that predates ``cold_start_ms`` (its messages forbid unknown fields) still reads a warm
    dispatch: the field is left out while 0."""
    assert "cold_start_ms" not in Dispatched(id="a", attempt=1).model_dump_json()
    cold = Dispatched(id="a", attempt=1, cold_start_ms=1200)
    assert ReplyAdapter.validate_json(cold.model_dump_json()) == cold


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'a1' * 16}-{'b2' * 8}-01",
        f"00-{'a1' * 16}-{'b2' * 8}-00",  # not sampled
        f"00-{'0' * 32}-{'b2' * 8}-01",  # no trace id: invalid
        f"00-{'a1' * 16}-{'0' * 16}-01",  # no span id: invalid
        f"00-{'A1' * 16}-{'b2' * 8}-01",  # upper case: invalid
        f"01-{'a1' * 16}-{'b2' * 8}-01-later",  # a later version, with more fields
        f"ff-{'a1' * 16}-{'b2' * 8}-01",  # version ff: invalid
        "00-junk",
    ],
)
def test_a_traceparent_reads_as_the_propagator_reads_it(traceparent: str) -> None:
    """``parent_context`` parses version 00 itself (cheaper): it must agree with the W3C propagator."""
    ours = trace.get_current_span(parent_context(traceparent)).get_span_context()
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))
    assert ours == theirs.get_span_context()


def test_a_span_writes_the_traceparent_the_propagator_writes() -> None:
    tracing, _ = in_memory()
    for sampled in (True, False):
        parent = parent_context(f"00-{'a1' * 16}-{'b2' * 8}-{'01' if sampled else '00'}")
        span = tracing.started("s", parent=parent, attributes={})
        assert span is not None
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        assert traceparent_of(span) == carrier["traceparent"]


def test_an_unsampled_request_is_dispatched_as_it_is_without_spans() -> None:
    """Its trace is not recorded (the client's or the admitting gateway's sampler said so): no spans, and the
    runtime gets the same ``traceparent``, so it records nothing either."""
    tracing, exported = in_memory()
    request = wire.GenerationRequest(id="c", prompt="p", request_id="r", traceparent=f"00-{'1' * 32}-{'2' * 16}-00")
    delivery = Delivery("1-0", QueuedRequest(request=request, reply_to="replies:gw", accepted_at=0.0))
    spans = DispatchSpans(tracing, model="m", gateway_id="gw")
    assert spans.sent([delivery], "http://r", ReplicaStart(1.0))[0] is request
    spans.ended("c")
    assert exported.get_finished_spans() == ()


def test_a_sampled_dispatch_records_its_queue_wait_and_dispatch() -> None:
    tracing, exported = in_memory()
    request = wire.GenerationRequest(id="c", prompt="p", request_id="r", traceparent=f"00-{'1' * 32}-{'2' * 16}-01")
    delivery = Delivery("1-0", QueuedRequest(request=request, reply_to="replies:gw", accepted_at=0.0, gateway="a"))
    spans = DispatchSpans(tracing, model="m", gateway_id="gw")
    sent = spans.sent([delivery], "http://r", ReplicaStart())[0]  # a warm replica: no cold start
    spans.ended("c")
    queue_wait, dispatch = exported.get_finished_spans()
    assert (queue_wait.name, dispatch.name) == ("kaltstart.queue_wait", "kaltstart.dispatch")
    assert sent.traceparent == f"00-{'1' * 32}-{dispatch.context.span_id:016x}-01"
    assert queue_wait.parent is not None and dispatch.parent is not None
    assert queue_wait.parent.span_id == dispatch.parent.span_id == int("2" * 16, 16)
    assert {"kaltstart.admitted_by": "a", "kaltstart.dispatched_by": "gw"}.items() <= dict(
        queue_wait.attributes or {}
    ).items()
    assert (dispatch.attributes or {})["kaltstart.request_id"] == "r"


def test_an_admission_that_fails_ends_its_span_as_an_error() -> None:
    tracing, exported = in_memory()
    with (
        tracing.server_span("POST /v1/completions", {}, {}),
        pytest.raises(LookupError),
        tracing.span("kaltstart.admission", {"gen_ai.request.model": "m"}),
    ):
        raise LookupError("no such model")
    admission, request = exported.get_finished_spans()
    assert admission.parent is not None and admission.parent.span_id == request.context.span_id
    assert admission.status.status_code is StatusCode.ERROR
    assert [event.name for event in admission.events] == ["exception"]


def test_an_unsampled_request_makes_no_admission_span() -> None:
    """Under a request span that is not recorded (the client's ``traceparent`` says not sampled), the admission
    span is not even made (it would not be recorded either)."""
    tracing, exported = in_memory()
    unsampled = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"}
    with tracing.server_span("POST /v1/completions", unsampled, {}) as request:
        assert not request.is_recording()
        assert tracing.span("kaltstart.admission") is OFF.span("kaltstart.admission")
        assert tracing.traceparent() == f"00-{'1' * 32}-{request.get_span_context().span_id:016x}-00"
    assert exported.get_finished_spans() == ()
