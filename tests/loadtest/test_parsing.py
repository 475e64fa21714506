"""What the load tests read (Prometheus text, gateway logs) and how they report (tables, the last JSON line)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from loadtest import logs, prometheus
from loadtest.report import Table, finish
from loadtest.stats import percentile

pytestmark = pytest.mark.unit

METRICS = """\
# HELP kaltstart_replicas Replicas by state (desired, ready).
# TYPE kaltstart_replicas gauge
kaltstart_replicas{model="tiny",state="desired"} 1.0
kaltstart_replicas{model="tiny",state="ready"} 0.0
kaltstart_replicas{model="other",state="ready"} 2.0
kaltstart_cold_starts_total{model="tiny"} 3.0
kaltstart_cold_starts_created{model="tiny"} 1.7958867565550256e+09
kaltstart_cold_starts_total{model="other"} 1.0
"""


def test_prometheus_samples_by_model_and_totals() -> None:
    scrape = prometheus.parse(METRICS)
    assert scrape.by_model("kaltstart_replicas", state="ready") == {"tiny": 0.0, "other": 2.0}
    assert scrape.value("kaltstart_replicas", model="tiny", state="desired") == 1.0
    assert scrape.total("kaltstart_cold_starts_total") == 4.0
    assert scrape.value("kaltstart_replicas", model="nope", state="ready") is None


GATEWAY_LOG = "\n".join(
    [
        "2026-11-28 17:25:56,555 INFO    kaltstart.scaling: scaling tiny from zero for a waiting request",
        "2026-11-28 17:25:56,949 INFO    kaltstart.local: [tiny#0] "
        "2026-11-28 17:25:56,947 INFO uvicorn.error: Started server process [9015]",
        "INFO:     Started server process [8971]",
        "2026-11-28 17:26:03,344 INFO    kaltstart.local: replica tiny#0 is ready at http://127.0.0.1:36397",
    ]
)


def test_log_lines_carry_the_runtime_s_own_timestamp() -> None:
    lines = list(logs.parse(GATEWAY_LOG))
    assert [line.replica for line in lines] == [None, "tiny#0", None]  # uvicorn's own format is skipped
    started = datetime(2026, 11, 28, 17, 25, 56, 947000).timestamp()
    assert lines[1].at == pytest.approx(started)
    assert lines[1].message == "Started server process [9015]"
    found = logs.find(lines, r"is ready at", runtime=False)
    assert found is not None
    match = logs.REPLICA_READY.search(found[0].message)
    assert match is not None and match.group(2) == "http://127.0.0.1:36397"
    assert logs.find(lines, r"is ready at", runtime=True) is None


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 99) == 99.0


def test_tables_then_one_json_line_last(tmp_path: Path) -> None:
    table = Table("demo", ["name", "value"])
    table.add("latency", 12.345)
    table.add("missing", None)
    stream = io.StringIO()
    finish([table], {"p50_ms": 12.3456789, "nan": float("nan"), "rows": [{"x": 1.0}]}, tmp_path / "out", stream)
    lines = stream.getvalue().strip().splitlines()
    assert lines[0] == "demo"
    assert json.loads(lines[-1]) == {"p50_ms": 12.3457, "nan": None, "rows": [{"x": 1.0}]}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(lines[-1])
