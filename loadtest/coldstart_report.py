"""``bench coldstart``'s figures: the summary JSON of one gateway's cold starts and the tables printed from it.

Each run's main phases run from one mark to the next, so they add up to that run's TTFT; the timeline printed and
plotted is the *median run*'s (the run whose TTFT is the median, the lower of the two middle ones for an even
count), not the per-phase medians laid end to end, which need not add up to anything measured. The per-phase
medians are still reported, each under its own key (``trigger_ms`` ...), as figures of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loadtest.report import Table
from loadtest.results import Phase
from loadtest.stats import ratio

if TYPE_CHECKING:
    from loadtest.coldstart import ColdStart, ColdStartOptions

__all__ = ["median_run", "median_run_phases", "run_record", "standby_table", "summarise", "tables"]


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _gbps(size: int, seconds: float | None) -> float | None:
    return size / seconds / 1e9 if seconds else None


def median_run(runs: Sequence[ColdStart]) -> ColdStart | None:
    """The answered run whose TTFT is the median (the lower middle one of an even count); None if none was."""
    answered = sorted((r for r in runs if r.ok and r.ttft_s is not None), key=lambda r: r.ttft_s or 0.0)
    return answered[(len(answered) - 1) // 2] if answered else None


def median_run_phases(runs: Sequence[ColdStart]) -> list[Phase]:
    """The median run's phases on its own time line (they end at its first token)."""
    middle = median_run(runs)
    return [] if middle is None else middle.phases()


def run_record(run: ColdStart, raw_bytes: int) -> dict[str, Any]:
    """One cold start as the summary's ``runs`` list holds it."""
    phases = run.phase_seconds()
    found = [v for v in phases.values() if v is not None]
    return {
        "order": run.order,
        "ok": run.ok,
        "ttft_s": run.ttft_s,
        "phases_s": phases,
        "phases_sum_s": sum(found) if run.first_token is not None else None,
        "engine_s": run.engine,
        "resident_bytes_before_load": run.resident_before_load,
        "resident_bytes_before_raw_read": run.resident_before_raw_read,
        "raw_read_gbps_1": _gbps(raw_bytes, run.raw_1_s),
        "raw_read_gbps_n": _gbps(raw_bytes, run.raw_n_s),
        "replacement_started_s": run.replacement_started_s,
        "replacement_overlap_s": run.replacement_overlap_s,
    }


def _eviction_verified(runs: Sequence[ColdStart], evicted: bool) -> bool | None:
    """True if no weight byte was in the page cache before any load or raw read; None when not evicting."""
    if not evicted:
        return None
    found = [r.resident_before_load for r in runs] + [r.resident_before_raw_read for r in runs]
    return all(b == 0 for b in found if b is not None) and any(b is not None for b in found)


def _max(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def summarise(
    runs: Sequence[ColdStart],
    *,
    load_bytes: int,
    raw_bytes: int,
    options: ColdStartOptions,
    startups: Sequence[float] = (),
) -> dict[str, Any]:
    def med(values: Sequence[float | None], scale: float = 1.0) -> float | None:
        return _scaled(_median(values), scale)

    load_s = med([r.engine.get("load") for r in runs])
    load_gbps = load_bytes / load_s / 1e9 if load_s else None
    raw_1 = _gbps(raw_bytes, _median([r.raw_1_s for r in runs]))
    raw_n = _gbps(raw_bytes, _median([r.raw_n_s for r in runs]))
    middle = median_run(runs)
    return {
        "trigger_ms": med([_between(r.sent, r.scale) for r in runs], 1000),
        "spawn_ms": med([_between(r.scale, r.spawn) for r in runs], 1000),
        "process_start_ms": med([_between(r.spawn, r.process) for r in runs], 1000),
        "cache_s": med([r.engine.get("cache") for r in runs]),
        "imports_s": med([r.engine.get("imports") for r in runs]),
        "load_s": load_s,
        "load_bytes": load_bytes,
        "load_gbps": load_gbps,
        "raw_read_gbps": raw_1,
        "raw_read_gbps_1": raw_1,
        "raw_read_gbps_n": raw_n,
        "raw_read_threads": options.read_threads,
        "load_efficiency": ratio(load_gbps, raw_1),
        "load_efficiency_n": ratio(load_gbps, raw_n),
        "warmup_s": med([r.engine.get("warmup") for r in runs]),
        "engine_start_s": med([_between(r.process, r.ready) for r in runs]),
        "ready_to_dispatch_ms": med([_between(r.ready, r.dispatch) for r in runs], 1000),
        "probe_lag_ms": med([_between(r.ready, r.gateway_ready) for r in runs], 1000),
        "first_token_ms": med([_between(r.dispatch, r.first_token) for r in runs], 1000),
        "ttft_s": med([r.ttft_s for r in runs]),
        "total_s": med([r.done - r.sent if r.ok else None for r in runs]),
        "cold_starts": len(runs),
        "errors": sum(not r.ok for r in runs),
        "cache_hits": sum(bool(r.cache_hit) for r in runs),
        "page_cache_evicted": options.evict_page_cache,
        "resident_bytes_before_load": _max([r.resident_before_load for r in runs]),
        "page_cache_eviction_verified": _eviction_verified(runs, options.evict_page_cache),
        "device": options.device,
        "standby": options.standby,
        "standby_startup_s": _median(startups) if options.standby else None,
        "standby_startups": len(startups),
        "replacement_overlap_s": med([r.replacement_overlap_s for r in runs]),
        "median_run": None if middle is None else runs.index(middle),
        "median_run_phases_s": None if middle is None else middle.phase_seconds(),
        "runs": [run_record(r, raw_bytes) for r in runs],
    }


def tables(runs: Sequence[ColdStart], summary: dict[str, Any]) -> list[Table]:
    middle = median_run(runs)
    title = "cold start from zero replicas"
    if len(runs) > 1 and middle is not None:
        title += f" (the median run by TTFT, run {runs.index(middle) + 1} of {len(runs)})"
    timeline = Table(title, ["phase", "starts at s", "takes s", "share of TTFT"])
    ttft = None if middle is None else middle.ttft_s
    for phase in median_run_phases(runs):
        share = f"{phase.seconds / ttft:.0%}" if ttft and phase.main else ""
        timeline.add(phase.name, phase.start_s, phase.seconds, share)
    timeline.add("time to first token", None, ttft, "100%" if ttft else "")
    if len(runs) > 1:
        timeline.add(f"time to first token, median of {len(runs)}", None, summary["ttft_s"], "")
    timeline.add("total (last byte), median", None, summary["total_s"], "")
    return [timeline, _per_run_table(runs), _weights_table(summary)]


def _per_run_table(runs: Sequence[ColdStart]) -> Table:
    """Every run's main phases in seconds; each row adds up to its TTFT."""
    names = list(runs[0].phase_seconds()) if runs else []
    table = Table("each run's phases (s; each row adds up to its TTFT)", ["run", *names, "TTFT"])
    for number, run in enumerate(runs, 1):
        table.add(f"{number} (#{run.order})", *run.phase_seconds().values(), run.ttft_s)
    return table


def _weights_table(summary: dict[str, Any]) -> Table:
    weights = Table("weight load", ["figure", "value"])
    weights.add("bytes", f"{summary['load_bytes']:,}")
    weights.add("load (runtime) GB/s", summary["load_gbps"])
    weights.add("raw read, same files, 1 thread, GB/s", summary["raw_read_gbps_1"])
    weights.add(f"raw read, same files, {summary['raw_read_threads']} threads, GB/s", summary["raw_read_gbps_n"])
    weights.add("load efficiency (vs 1 thread)", summary["load_efficiency"])
    weights.add(f"load efficiency (vs {summary['raw_read_threads']} threads)", summary["load_efficiency_n"])
    weights.add("page cache evicted", summary["page_cache_evicted"])
    resident = summary["resident_bytes_before_load"]
    weights.add("resident bytes before a load (most)", None if resident is None else f"{resident:,}")
    if summary["page_cache_eviction_verified"] is False:
        weights.add(
            "EVICTION DID NOT WORK", "weight bytes were in the page cache before a read: the disk is not measured"
        )
    else:
        weights.add("eviction verified (mincore)", summary["page_cache_eviction_verified"])
    return weights


def standby_table(cold: dict[str, Any], warm: dict[str, Any]) -> Table:
    """The two cold starts side by side: the figures a standby runtime changes, and their ratio."""
    table = Table("standby runtime: off vs on (medians, runs alternating)", ["figure", "off", "on", "on / off"])
    for key in ("ttft_s", "engine_start_s", "imports_s", "load_s", "warmup_s", "ready_to_dispatch_ms"):
        table.add(key, cold[key], warm[key], ratio(warm[key], cold[key]))
    table.add("standby_startup_s (its own process + imports)", None, warm["standby_startup_s"], None)
    table.add("replacement_overlap_s (before the first token)", None, warm["replacement_overlap_s"], None)
    return table
