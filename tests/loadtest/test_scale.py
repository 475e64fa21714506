"""``bench scale`` runs end to end on a few models (API double, Valkey, gateway and echo pods as real processes)
and reports every figure it promises, with every request answered. How fast anything is, is not tested."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.loadtest.conftest import loadtest

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

FIGURES = {
    "models", "startup_s", "rss_mb", "idle_cpu_percent", "idle_redis_ops_per_s", "redis_connections",
    "edit_to_visible_ms", "edit_to_visible_max_ms", "metrics_ms", "warm_p50_ms", "warm_p99_ms",
}  # fmt: skip
FLEET = {"warm_models", "requests", "answered", "errors", "p50_ms", "p99_ms", "redis_connections", "rss_mb",
         "idle_cpu_percent", "idle_redis_ops_per_s"}  # fmt: skip


async def test_scale(tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "scale", "--models", "3,5", "--warm", "2", "--window", "0.5", "--requests", "10", "--edits", "2",
        "--scrapes", "2", "--rounds", "2", "--out", tmp_path / "out",
        timeout_s=55,
    )  # fmt: skip

    summary = run.check().summary
    assert [r["models"] for r in summary["runs"]] == [3, 5]
    for result in summary["runs"]:
        assert set(result) == FIGURES | {"fleet"}
        assert all(result[key] is not None for key in FIGURES), result
        assert result["redis_connections"] >= 1 and result["rss_mb"] > 0
        fleet = result["fleet"]
        assert set(fleet) == FLEET
        assert fleet["warm_models"] == 2 and fleet["requests"] == 4
        assert fleet["answered"] == 4 and fleet["errors"] == [], fleet
    assert "Redis ops/s" in run.stdout and "answered" in run.stdout
    assert (tmp_path / "out" / "summary.json").exists()
