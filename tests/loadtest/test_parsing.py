"""What the load tests read (Prometheus text, gateway logs) and how they report (tables, the last JSON line)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from loadtest import logs, prometheus
from loadtest.report import Table, finish
from loadtest.stats import added_latency, percentile

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


def test_added_latency_is_a_difference_of_percentiles_in_ms() -> None:
    direct, gateway = [0.001, 0.002, 0.003], [0.002, 0.004, 0.010]
    figures = added_latency(direct, gateway)
    assert figures["direct_p50_ms"] == pytest.approx(2.0) and figures["gateway_p50_ms"] == pytest.approx(4.0)
    assert figures["added_p50_ms"] == pytest.approx(2.0)
    assert figures["added_p99_ms"] == pytest.approx(9.88 - 2.98)
    assert added_latency([], gateway)["added_p50_ms"] is None  # a side with nothing measured: no figure


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


def test_bench_pool_keeps_a_failed_run_out_of_its_medians_and_misses_the_targets_it_touches() -> None:
    from loadtest.poolbench import PoolOptions, PoolRun
    from loadtest.poolbench_report import summarise

    def summary(runs: list[PoolRun]) -> dict[str, Any]:
        return summarise(runs, PoolOptions(repeat=2), model="demo", weight_bytes=1, budget_bytes=1, pool_start_s=1.0)

    fast = [PoolRun("parked", ttft_s=0.05), PoolRun("absent", ttft_s=0.5), PoolRun("cold", ttft_s=5.0)]
    assert summary(fast)["targets"] == {"parked_le_200ms": True, "parked_le_tenth_of_cold": True}
    # A run whose model was not parked (the bench's state check) is an error: in no median, and no PASS beside it.
    failed = PoolRun("parked", ttft_s=0.01, error="target was active before the request (not parked)")
    found = summary([*fast, failed])
    assert found["ttft_parked_s"] == 0.05 and found["ttft_parked_s_runs"] == [0.05, None]
    assert found["errors"] == 1 and found["errors_by_side"] == {"parked": 1, "absent": 0, "cold": 0}
    assert found["targets"] == {"parked_le_200ms": False, "parked_le_tenth_of_cold": False}
    slow = [PoolRun("parked", ttft_s=0.6), *fast[1:]]  # over 0.2 s, and 0.12 of the cold start
    assert summary(slow)["targets"] == {"parked_le_200ms": False, "parked_le_tenth_of_cold": False}


def test_bench_pool_counts_a_run_whose_model_was_not_in_its_side_s_state_as_an_error() -> None:
    from loadtest.poolbench import state_error

    assert state_error("parked", "parked", "active") is None and state_error("absent", "absent", "active") is None
    assert state_error("parked", "active", "active") is not None  # never parked: it measured an active model
    assert state_error("absent", "parked", "active") is not None  # woken, not loaded
    assert state_error("parked", "parked", "parked") is not None  # not woken by the request
