"""The runtime's log lines and tracing switch (issue #27)."""

from __future__ import annotations

import io
import json

import pytest

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
