"""``bench pool``'s figures: the summary JSON of the three sides and the tables printed from it.

Each side's TTFT is the median of its answered runs (``ttft_<side>_s``), next to every run's value
(``ttft_<side>_s_runs``, null for a failed run, in the order measured); ``parked_vs_cold`` and ``absent_vs_cold``
are ratios of those medians. A run with an error counts in ``errors`` and in no median; a target compared on a
side with errors is a MISS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loadtest.report import Table
from loadtest.stats import median, ratio

if TYPE_CHECKING:
    from loadtest.poolbench import PoolOptions, PoolRun

__all__ = ["COLD_FACTOR", "PARKED_MAX_S", "SIDES", "summarise", "tables", "targets"]

SIDES = ("parked", "absent", "cold")
#: The issue's targets: a parked model's TTFT at most this many seconds, and at most 1/COLD_FACTOR of a cold start's.
PARKED_MAX_S = 0.2
COLD_FACTOR = 10.0


def _known(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _record(run: PoolRun) -> dict[str, Any]:
    return {
        "side": run.side,
        "repetition": run.repetition,
        "order": run.order,
        "ttft_s": run.ttft_s if run.ok else None,
        "error": run.error,
        "state_before": run.state_before,
        "state_after": run.state_after,
        "loads": run.loads,
        "wakes": run.wakes,
        "resident_bytes_before_load": run.resident_before_load,
        "move_s": run.move_s,
        "ready_s": run.ready_s,
        "engine_s": run.engine or None,
    }


def targets(summary: dict[str, Any]) -> dict[str, bool | None]:
    """PASS (True) / MISS (False) / not measured (None) for each of the issue's targets."""
    errors = summary["errors_by_side"]
    parked, ratio_to_cold = summary["ttft_parked_s"], summary["parked_vs_cold"]
    return {
        "parked_le_200ms": None if parked is None else errors["parked"] == 0 and parked <= PARKED_MAX_S,
        "parked_le_tenth_of_cold": None
        if ratio_to_cold is None
        else errors["parked"] + errors["cold"] == 0 and ratio_to_cold <= 1 / COLD_FACTOR,
    }


def summarise(
    runs: Sequence[PoolRun],
    options: PoolOptions,
    *,
    model: str,
    weight_bytes: int,
    budget_bytes: int,
    pool_start_s: float,
) -> dict[str, Any]:
    by_side = {side: [r for r in runs if r.side == side] for side in SIDES}
    ttft = {side: median(_known([r.ttft_s for r in found if r.ok])) for side, found in by_side.items()}
    cold = by_side["cold"]
    resident = _known([r.resident_before_load for r in runs])
    summary: dict[str, Any] = {f"ttft_{side}_s": ttft[side] for side in SIDES}
    summary |= {f"ttft_{side}_s_runs": [r.ttft_s if r.ok else None for r in by_side[side]] for side in SIDES}
    summary |= {
        "parked_vs_cold": ratio(ttft["parked"], ttft["cold"]),
        "absent_vs_cold": ratio(ttft["absent"], ttft["cold"]),
        "wake_s": median(_known([r.move_s for r in by_side["parked"]])),
        "load_s": median(_known([r.move_s for r in by_side["absent"]])),
        "cold_ready_s": median(_known([r.ready_s for r in cold])),
        **{f"cold_{part}_s": median([r.engine[part] for r in cold if part in r.engine]) for part in _ENGINE_PARTS},
        "pool_start_s": pool_start_s,
        "model": model,
        "weight_bytes": weight_bytes,
        "pool_device_budget_bytes": budget_bytes,
        "pool_host_budget_bytes": budget_bytes,
        "repeat": options.repeat,
        "max_tokens": options.max_tokens,
        "warmup": options.warmup,
        "interleaved": True,
        "resident_bytes_before_load": max(resident) if resident else None,
        "page_cache_eviction_verified": (all(b == 0 for b in resident) and bool(resident))
        if options.evict_page_cache
        else None,
        "errors": sum(1 for r in runs if not r.ok),
        "errors_by_side": {side: sum(1 for r in found if not r.ok) for side, found in by_side.items()},
        "runs": [_record(r) for r in runs],
    }
    summary["targets"] = targets(summary)
    return summary


_ENGINE_PARTS = ("imports", "load", "warmup")


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else "PASS" if passed else "MISS"


def _seconds(values: Sequence[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.3f}" for v in values)


def _sides_table(s: dict[str, Any]) -> Table:
    table = Table(
        f"pool: time to first token of one model ({s['model']}, {s['weight_bytes'] / 1e6:.1f} MB of weights), "
        f"{s['repeat']} interleaved repetitions; page cache evicted: {_eviction(s)}",
        ["side", "TTFT s (median)", "runs s", "vs cold", "of which", "errors"],
    )
    table.add("parked (wake)", s["ttft_parked_s"], _seconds(s["ttft_parked_s_runs"]), s["parked_vs_cold"],
              f"wake {_fmt(s['wake_s'])} s", s["errors_by_side"]["parked"])  # fmt: skip
    table.add("absent (load)", s["ttft_absent_s"], _seconds(s["ttft_absent_s_runs"]), s["absent_vs_cold"],
              f"load {_fmt(s['load_s'])} s", s["errors_by_side"]["absent"])  # fmt: skip
    cold_parts = (
        f"ready {_fmt(s['cold_ready_s'])} s (imports {_fmt(s['cold_imports_s'])}, load {_fmt(s['cold_load_s'])}, "
        f"warmup {_fmt(s['cold_warmup_s'])})"
    )
    same = 1.0 if s["ttft_cold_s"] else None
    table.add("cold (new process)", s["ttft_cold_s"], _seconds(s["ttft_cold_s_runs"]), same, cold_parts,
              s["errors_by_side"]["cold"])  # fmt: skip
    return table


def _eviction(s: dict[str, Any]) -> str:
    verified = s["page_cache_eviction_verified"]
    return "no (--no-evict-page-cache)" if verified is None else "verified (mincore)" if verified else "NOT verified"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _runs_table(s: dict[str, Any]) -> Table:
    table = Table(
        "pool: each measured request, in order (state from /readyz before -> after)",
        ["#", "rep", "side", "state", "loads", "wakes", "resident before", "wake/load/ready s", "TTFT s", "error"],
    )
    for r in s["runs"]:
        state = "-" if r["state_before"] is None else f"{r['state_before']} -> {r['state_after']}"
        resident = r["resident_bytes_before_load"]
        table.add(r["order"], r["repetition"], r["side"], state, r["loads"], r["wakes"],
                  None if resident is None else f"{resident:,}", r["move_s"] or r["ready_s"], r["ttft_s"],
                  (r["error"] or "")[:60])  # fmt: skip
    return table


def _targets_table(s: dict[str, Any]) -> Table:
    table = Table("targets (issue #26: bench pool; errors on a side compared make it a MISS)",
                  ["result", "target", "measured"])  # fmt: skip
    verdicts = s["targets"]
    table.add(_verdict(verdicts["parked_le_200ms"]), f"parked TTFT <= {PARKED_MAX_S:g} s",
              f"{_fmt(s['ttft_parked_s'])} s")  # fmt: skip
    table.add(_verdict(verdicts["parked_le_tenth_of_cold"]), f"parked TTFT <= 1/{COLD_FACTOR:g} of the cold start's",
              f"{_fmt(s['parked_vs_cold'])} of {_fmt(s['ttft_cold_s'])} s")  # fmt: skip
    return table


def tables(summary: dict[str, Any]) -> list[Table]:
    return [_runs_table(summary), _sides_table(summary), _targets_table(summary)]
