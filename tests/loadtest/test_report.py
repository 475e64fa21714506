"""``python -m loadtest report``: the README's "Measure it" table is the one the archived summaries make, all of
one commit; a table from several commits is refused unless asked for, and every row says where it was measured.

The fixture summaries below are made up for these tests (their figures are plain round numbers); the archive's
(loadtest/results/) come from real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import archive
from tests.loadtest.conftest import REPO_ROOT, loadtest

_OVERHEAD = {
    "direct_p50_ms": 1.0, "gateway_p50_ms": 4.0, "added_p50_ms": 3.0, "direct_p99_ms": 2.0, "gateway_p99_ms": 8.0,
    "added_p99_ms": 6.0, "direct_rps": 2000.0, "gateway_rps": 500.0, "rps_ratio": 0.25, "concurrency": 4,
    "requests_per_side": 80, "rounds": 2, "errors": 0, "gateway_cpu_ms_per_request": 1.5,
}  # fmt: skip
_RELAY = {
    "direct_chunks_per_s": 4000.0, "gateway_chunks_per_s": 2000.0, "relay_ratio": 0.5, "direct_ttft_p50_ms": 1.0,
    "gateway_ttft_p50_ms": 3.0, "ttft_added_p50_ms": 2.0, "streams": 3, "tokens": 20, "rounds": 2, "errors": 0,
}  # fmt: skip


def _provenance(bench: str, commit: str) -> dict[str, Any]:
    return {
        "bench": bench,
        "argv": ["bench", bench, "--rounds", "2", "--out", "/somewhere/else"],
        "commit": commit,
        "dirty": False,
        "date": "2026-12-06T12:00:00+00:00",
        "machine": {"cores": 2, "usable_cores": 2, "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.5, 1.0]},
    }


def _write(folder: Path, bench: str, summary: dict[str, Any], commit: str, name: str | None = None) -> None:
    """As the archive holds it (``<bench>.json``), or as a bench's ``--out`` folder does (``name="summary"``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or bench}.json"
    path.write_text(json.dumps(summary | {"provenance": _provenance(bench, commit)}))


@pytest.mark.unit
def test_the_readme_holds_the_table_the_archive_makes() -> None:
    summaries = archive.load([archive.ARCHIVE])
    assert summaries, "loadtest/results/ holds no summaries"
    archive.check_one_commit(summaries)
    readme = (REPO_ROOT / "README.md").read_text()
    assert archive.current_block(readme) == archive.readme_block(summaries), (
        "README.md's table is not the archive's: python -m loadtest report --readme README.md"
    )


@pytest.mark.unit
def test_each_row_names_its_command_commit_date_and_load(tmp_path: Path) -> None:
    _write(tmp_path, "overhead", _OVERHEAD, "a" * 40)
    (row,) = archive.table(archive.load([tmp_path])).splitlines()[2:]
    assert row.startswith("| `bench overhead --rounds 2`, echo engine")  # --out DIR is left out
    assert "added p50 3.0 ms" in row and "gateway CPU 1.50 ms per request" in row
    assert row.endswith("| `aaaaaaaaaa`, 2026-12-06, 2 cores, load 1.0 → 2.0 |")


@pytest.mark.integration
async def test_summaries_of_two_commits_are_refused_unless_allowed(tmp_path: Path) -> None:
    _write(tmp_path, "overhead", _OVERHEAD, "a" * 40)
    _write(tmp_path, "relay", _RELAY, "b" * 40)

    refused = await loadtest("report", "--from", tmp_path)
    assert refused.returncode == 2
    assert "2 commits" in refused.stderr and "aaaaaaaaaa: overhead" in refused.stderr
    assert "bbbbbbbbbb: relay" in refused.stderr and "--allow-mixed" in refused.stderr

    mixed = (await loadtest("report", "--from", tmp_path, "--allow-mixed")).check()
    assert mixed.summary["commits"] == ["a" * 40, "b" * 40]
    rows = [line for line in mixed.stdout.splitlines() if line.startswith("| `bench")]
    assert [row.split("`")[-2] for row in rows] == ["aaaaaaaaaa", "bbbbbbbbbb"]


@pytest.mark.integration
async def test_save_then_write_the_readme_then_check_it(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _write(out / "overhead", "overhead", _OVERHEAD, "c" * 40, name="summary")
    _write(out / "relay", "relay", _RELAY, "c" * 40, name="summary")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{archive.BEGIN}\nold table\n{archive.END}\n\nafter\n")
    store = tmp_path / "archive"
    store.mkdir()

    stale = await loadtest("report", "--archive", store, "--readme", readme, "--check")
    assert stale.returncode == 2 and "no summaries" in stale.stderr

    args = ("--from", out / "overhead", "--from", out / "relay", "--archive", store, "--save", "--readme", readme)
    (await loadtest("report", *args)).check()
    assert sorted(p.name for p in store.iterdir()) == ["overhead.json", "relay.json"]
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(f"{archive.END}\n\nafter\n")
    assert "old table" not in text and "relay_ratio` 0.50" in text

    checked = (await loadtest("report", "--archive", store, "--readme", readme, "--check")).check()
    assert checked.summary["readme_differs"] is False
    readme.write_text(text.replace("0.50", "0.90"))
    edited = await loadtest("report", "--archive", store, "--readme", readme, "--check")
    assert edited.returncode == 1 and edited.summary["readme_differs"] is True


@pytest.mark.integration
async def test_a_summary_without_provenance_is_refused(tmp_path: Path) -> None:
    (tmp_path / "overhead.json").write_text(json.dumps(_OVERHEAD))
    refused = await loadtest("report", "--from", tmp_path)
    assert refused.returncode == 2 and "has no 'provenance'" in refused.stderr


def _scale_run(**more: Any) -> dict[str, Any]:
    return {
        "models": 10, "idle_cpu_percent": 1.0, "idle_redis_ops_per_s": 2.0, "redis_connections": 3, "rss_mb": 100.0,
        "edit_to_visible_ms": 4.0, "metrics_ms": 1.0, "warm_p50_ms": 2.0,
        "fleet": {"answered": 6, "requests": 6, "warm_models": 3},
    } | more  # fmt: skip


@pytest.mark.unit
def test_a_scale_row_names_its_windows_and_valkeys_cpu_where_measured(tmp_path: Path) -> None:
    """A summary with several idle windows says so and gives the Valkey server's CPU; an older one reads as it did."""
    new_run = _scale_run(idle_valkey_cpu_percent=0.5)
    new_run["fleet"] |= {"warm_processes": 2}
    _write(tmp_path / "new", "scale", {"runs": [new_run], "window_s": 120.0, "windows": 3}, "a" * 40)
    _write(tmp_path / "old", "scale", {"runs": [_scale_run()], "window_s": 10.0}, "a" * 40)

    (new,) = archive.table(archive.load([tmp_path / "new"])).splitlines()[2:]
    (old,) = archive.table(archive.load([tmp_path / "old"])).splitlines()[2:]

    assert "idle: median of 3 windows of 120.0 s" in new and "idle CPU 1.0 % (the Valkey server's 0.5 %)" in new
    assert "3 more models warm on 2 runtime processes" in new
    assert "idle window 10.0 s; N = 10: idle CPU 1.0 %, Redis" in old and "Valkey" not in old
