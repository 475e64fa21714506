"""The runtime's log lines and tracing switch (issue #27)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, SamplingResult

import wire
from runtime import logs, tracing
from tests.gateway.test_observability import line_of

pytestmark = pytest.mark.unit


def test_json_lines_name_their_requests() -> None:
    stream = io.StringIO()
    fields = json.loads(line_of(logs.handler("json", stream), stream, "batch", request_id="a,b"))
    assert fields["request_id"] == "a,b"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_SDK_DISABLED": "true"},
    ],
)
def test_tracing_is_off_unless_asked_for(environ: dict[str, str]) -> None:
    tracing.configure(environ)
    assert tracing.spans_for("m", [wire.GenerationRequest(id="c", prompt="p")]) is None


class AskedSampler(ParentBased):
    """The default sampler, noting the name of every span it is asked about."""

    def __init__(self) -> None:
        super().__init__(ALWAYS_ON)
        self.names: list[str] = []

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        self.names.append(args[2])
        return super().should_sample(*args, **kwargs)


def test_only_sampled_and_untraced_requests_get_a_generation_span() -> None:
    """A request whose ``traceparent`` says its trace is not sampled gets no span at all (it would not be recorded,
    and making it would cost the batch); one with a sampled trace, or none (a direct call), gets its span."""
    exporter = InMemorySpanExporter()
    asked = AskedSampler()
    provider = TracerProvider(sampler=asked)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure({}, provider)
    try:
        requests = [
            wire.GenerationRequest(id="sampled", prompt="p", traceparent=f"00-{'1' * 32}-{'2' * 16}-01"),
            wire.GenerationRequest(id="unsampled", prompt="p", traceparent=f"00-{'3' * 32}-{'4' * 16}-00"),
            wire.GenerationRequest(id="direct", prompt="p"),
        ]
        spans = tracing.spans_for("m", requests)
        assert spans is not None
        for request in requests:
            spans.saw(
                wire.FinishEvent(
                    id=request.id,
                    text="",
                    finish_reason="stop",
                    usage=wire.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
                )
            )
        finished = exporter.get_finished_spans()
        assert sorted(str(dict(s.attributes or {})["kaltstart.choice_id"]) for s in finished) == ["direct", "sampled"]
        assert asked.names == ["text_completion m"] * 2  # no span begun for the unsampled one
    finally:
        tracing.configure({})
