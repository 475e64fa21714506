"""``bench scale`` runs end to end on a few models (API double, Valkey, gateway and echo pods as real processes)
and reports every figure it promises, with every request answered. How fast anything is, is not tested. Also, as
pure logic: how the idle windows are summarised and how warm models are dealt over runtime processes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from loadtest.children import StartError
from loadtest.scale import add_arguments, fleet_deployments, options_of, summarise_windows
from tests.loadtest.conftest import loadtest, report_row

FIGURES = {
    "models", "startup_s", "rss_mb", "idle_cpu_percent", "idle_redis_ops_per_s", "redis_connections",
    "edit_to_visible_ms", "edit_to_visible_max_ms", "metrics_ms", "warm_p50_ms", "warm_p99_ms",
    "idle_valkey_cpu_percent", "idle_windows", "idle_spread",
}  # fmt: skip
FLEET = {"warm_models", "warm_processes", "requests", "answered", "errors", "p50_ms", "p99_ms", "redis_connections",
         "rss_mb", "idle_cpu_percent", "idle_valkey_cpu_percent", "idle_redis_ops_per_s", "idle_windows",
         "idle_spread"}  # fmt: skip
#: The figures measured in each idle window; the keys of the same names are their medians.
IDLE = ["idle_cpu_percent", "idle_valkey_cpu_percent", "idle_redis_ops_per_s", "redis_connections", "rss_mb"]


def check_idle(figures: dict[str, Any], windows: int) -> None:
    """Each window reports every figure; the old keys are the windows' medians, within their spread."""
    assert len(figures["idle_windows"]) == windows
    for key in IDLE:
        values = sorted(w[key] for w in figures["idle_windows"])
        assert figures[key] == values[len(values) // 2], key  # an odd count: the middle value
        assert figures["idle_spread"][key] == [values[0], values[-1]], key
    assert figures["idle_valkey_cpu_percent"] >= 0  # the embedded Valkey's pid is known, so it is measured


def window(cpu: float, valkey: float | None, ops: float, connections: int, rss: float) -> dict[str, float | None]:
    return dict(zip(IDLE, [cpu, valkey, ops, connections, rss], strict=True))


@pytest.mark.unit
def test_the_old_keys_are_the_windows_medians_and_the_spread_their_ends() -> None:
    windows = [window(1.0, 0.5, 2.0, 3, 100.0), window(9.0, 0.1, 1.0, 4, 101.0), window(2.0, 0.3, 1.5, 3, 102.0)]

    summary = summarise_windows(windows)

    assert summary["idle_windows"] == windows
    assert summary["idle_cpu_percent"] == 2.0 and summary["idle_spread"]["idle_cpu_percent"] == [1.0, 9.0]
    assert summary["idle_valkey_cpu_percent"] == 0.3 and summary["idle_redis_ops_per_s"] == 1.5
    assert summary["redis_connections"] == 3 and isinstance(summary["redis_connections"], int)
    assert summary["rss_mb"] == 101.0 and summary["idle_spread"]["rss_mb"] == [100.0, 102.0]


@pytest.mark.unit
def test_without_valkey_pid_its_cpu_is_null_not_zero() -> None:
    summary = summarise_windows([window(1.0, None, 2.0, 3, 100.0), window(2.0, None, 2.0, 3, 100.0)])

    assert summary["idle_valkey_cpu_percent"] is None and summary["idle_spread"]["idle_valkey_cpu_percent"] is None
    assert summary["idle_cpu_percent"] == 1.5


@pytest.mark.unit
def test_warm_models_are_dealt_over_one_pod_per_process(tmp_path: Path) -> None:
    names = [f"m{i}" for i in range(5)]

    two = fleet_deployments(names, 2, tmp_path)
    many = fleet_deployments(names, 9, tmp_path)

    assert [d["metadata"]["annotations"]["kaltstart.dev/models"] for d in two] == ["m0,m2,m4", "m1,m3"]
    assert all(d["spec"]["replicas"] == 1 for d in two)
    assert [d["metadata"]["annotations"]["kaltstart.dev/models"] for d in many] == names  # one process per model
    assert len({d["metadata"]["name"] for d in many}) == 5


@pytest.mark.integration
@pytest.mark.kubernetes
async def test_scale(tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "scale", "--models", "3,5", "--warm", "3", "--warm-processes", "2", "--window", "0.2",
        "--windows", "3", "--requests", "10", "--edits", "2", "--scrapes", "2", "--rounds", "2",
        "--out", tmp_path / "out",
        timeout_s=55,
    )  # fmt: skip

    summary = run.check().summary
    assert [r["models"] for r in summary["runs"]] == [3, 5]
    for result in summary["runs"]:
        assert set(result) == FIGURES | {"fleet"}
        assert all(result[key] is not None for key in FIGURES), result
        assert result["redis_connections"] >= 1 and result["rss_mb"] > 0
        check_idle(result, 3)
        fleet = result["fleet"]
        assert set(fleet) == FLEET
        assert fleet["warm_models"] == 3 and fleet["warm_processes"] == 2 and fleet["requests"] == 6
        assert fleet["answered"] == 6 and fleet["errors"] == [], fleet
        check_idle(fleet, 3)
    assert summary["windows"] == 3 and summary["warm_processes"] == 2
    assert "Redis ops/s" in run.stdout and "answered" in run.stdout
    assert "idle: median of 3 windows" in report_row(tmp_path / "out")


@pytest.mark.unit
def test_no_pod_is_given_more_names_than_a_runtime_serves() -> None:
    """150 warm models on the default 4 pods would be 38 names each: no runtime starts with more than 32
    (``wire.MAX_ANNOUNCED_MODELS``), and every fleet request timed out. The default now takes enough pods; too few
    asked for is refused."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_of(parser.parse_args(["--warm", "150"])).warm_processes == 5
    assert options_of(parser.parse_args(["--warm", "20"])).warm_processes == 4
    with pytest.raises(StartError, match="at least 5 pods"):
        options_of(parser.parse_args(["--warm", "150", "--warm-processes", "4"]))
