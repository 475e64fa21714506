"""Request ids, timing headers and traces (issue #27), through real gateways, a real Redis and real runtime processes.

The trace test runs two gateway replicas on one Redis: A admits the request (its own runtimes cannot start, so it
can never dispatch), B scales up, dispatches, and its runtime generates. The gateways export into memory; the
runtime, a child process, exports by OTLP/HTTP to a collector in this test that decodes the protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.logs import RequestIdFilter
from gateway.tracing import Tracing
from tests.harness import eventually, model, run_gateway, serve

pytestmark = pytest.mark.integration

KEY = "k" * 24
AUTH = {"authorization": f"Bearer {KEY}"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_the_request_id_is_on_every_answer_and_in_gateway_and_runtime_lines(
    redis_url: str, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    echo = model("echo", "unused", engine="echo", idle_timeout="600s")
    async with (
        run_gateway([echo], redis_url, cache_dir, api_keys=(KEY,), access_log=True) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=60, headers=AUTH) as client,
    ):
        body = {"model": "echo", "prompt": "hello there", "max_tokens": 4}
        answer = await client.post("/v1/completions", json=body, headers={"x-request-id": "req-7.a:b"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "req-7.a:b"
        assert int(answer.headers["x-kaltstart-cold-start-ms"]) > 0  # the first request met the cold start
        assert int(answer.headers["x-kaltstart-queue-ms"]) >= int(answer.headers["x-kaltstart-cold-start-ms"])

        warm = await client.post("/v1/completions", json=body, headers={"x-request-id": "req-8"})
        assert warm.headers["x-kaltstart-cold-start-ms"] == "0"

        # Not taken: made up instead (spaces, too long).
        for bad in ("two words", "x" * 129):
            made = await client.post("/v1/completions", json=body, headers={"x-request-id": bad})
            assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])

        streamed = await client.post("/v1/completions", json=body | {"stream": True}, headers={"x-request-id": "s-1"})
        assert streamed.headers["x-request-id"] == "s-1"
        assert "x-kaltstart-queue-ms" in streamed.headers

        # Refusals before and after the body is read, and an unknown model.
        refused = {
            401: await client.post("/v1/completions", json=body, headers={"authorization": "Bearer nope" * 3}),
            413: await client.post("/v1/completions", content=b"x" * (2 << 20)),
            404: await client.post("/v1/completions", json=body | {"model": "nope"}),
        }
        for status, response in refused.items():
            assert response.status_code == status
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])

        def runtime_line() -> bool:
            return any(
                "batch of 1" in r.getMessage() and "request_id=req-7.a:b" in r.getMessage() for r in caplog.records
            )

        await eventually(runtime_line)  # the runtime's line, relayed into the gateway's log
    access = [vars(r) for r in caplog.records if r.name == "kaltstart.access"]
    first = [line for line in access if line["request_id"] == "req-7.a:b"]
    assert len(first) == 1
    assert first[0]["status"] == 200
    assert first[0]["cold_start_ms"] > 0
    assert any(line["request_id"] == refused[401].headers["x-request-id"] for line in access)


class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent (decoded from protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.received = asyncio.Event()

    async def traces(self, request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.received.set()
        return Response(b"", media_type="application/x-protobuf")

    async def wait_for(self, name: str, timeout_s: float = 30.0) -> Any:
        async with asyncio.timeout(timeout_s):
            while not (found := [s for s in self.spans if s.name == name]):
                self.received.clear()
                await self.received.wait()
        return found[0]


@pytest.fixture
async def collector(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Collector]:
    receiver = Collector()
    app = Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])
    async with serve(app) as url:
        # The runtimes (children of the gateways) inherit OTEL_*: they trace to this collector, quickly.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        yield receiver


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_one_trace_from_the_client_through_two_gateways_into_the_runtime(
    redis_url: str, cache_dir: Path, collector: Collector
) -> None:
    tracing_a, exported_a = in_memory()
    tracing_b, exported_b = in_memory()
    # A's runtimes exit at once (an unknown flag): only B can dispatch.
    broken = model("echo", "unused", engine="echo", args=("--no-such-flag",))
    echo = model("echo", "unused", engine="echo", idle_timeout="600s")
    async with (
        run_gateway([echo], redis_url, cache_dir, tracing=tracing_b, gateway_id="gw-b", scale_interval_s=0.2),
        run_gateway([broken], redis_url, cache_dir, tracing=tracing_a, gateway_id="gw-a", scale_interval_s=0.2) as gw_a,
        httpx.AsyncClient(base_url=gw_a.url, timeout=60) as client,
    ):
        body = {"model": "echo", "prompt": "trace me", "max_tokens": 4, "stream": True}
        headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "x-request-id": "traced-1"}
        answer = await client.post("/v1/completions", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "traced-1"
        assert re.search(r": kaltstart: queue-ms=\d+ cold-start-ms=[1-9]\d*", answer.text)  # waits, after a cold start
        generation = await collector.wait_for("text_completion echo")
        prefill = await collector.wait_for("prefill")
        decode = await collector.wait_for("decode")

    a, b = by_name(exported_a.get_finished_spans()), by_name(exported_b.get_finished_spans())
    assert set(a) == {"POST /v1/completions", "kaltstart.admission"}  # A admitted, and dispatched nothing
    assert {"kaltstart.queue_wait", "kaltstart.cold_start", "kaltstart.dispatch"} <= set(b)
    spans = [*a.values(), *b.values()]
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}

    def parent(span: ReadableSpan) -> str:
        assert span.parent is not None
        return format(span.parent.span_id, "016x")

    def own(span: ReadableSpan) -> str:
        return format(span.context.span_id, "016x")

    request = a["POST /v1/completions"]
    assert parent(request) == CLIENT_SPAN
    assert attributes(request)["kaltstart.request_id"] == "traced-1"
    assert attributes(request)["http.response.status_code"] == 200
    assert parent(a["kaltstart.admission"]) == own(request)
    queue_wait, cold_start, dispatch = b["kaltstart.queue_wait"], b["kaltstart.cold_start"], b["kaltstart.dispatch"]
    assert parent(queue_wait) == own(request)
    assert attributes(queue_wait)["kaltstart.admitted_by"] == "gw-a"
    assert attributes(queue_wait)["kaltstart.dispatched_by"] == "gw-b"
    assert parent(cold_start) == own(queue_wait)
    assert {"replica.imports", "replica.load"} <= {event.name for event in cold_start.events}
    assert cold_start.end_time is not None and queue_wait.end_time is not None
    assert cold_start.end_time <= queue_wait.end_time
    assert parent(dispatch) == own(request)
    assert attributes(dispatch)["kaltstart.request_id"] == "traced-1"

    # The runtime's spans, from another process: the same trace, under B's dispatch span.
    assert generation.trace_id.hex() == TRACE_ID
    assert generation.parent_span_id.hex() == own(dispatch)
    generated = {kv.key: kv.value for kv in generation.attributes}
    assert generated["gen_ai.request.model"].string_value == "echo"
    assert generated["gen_ai.usage.output_tokens"].int_value > 0
    assert generated["gen_ai.usage.input_tokens"].int_value > 0
    assert generated["kaltstart.request_id"].string_value == "traced-1"
    assert prefill.parent_span_id == generation.span_id
    assert decode.parent_span_id == generation.span_id
