"""What ``bench continuous`` measured, judged and shown: the summary (per rate and per scheduler), the issue's
targets, the tables and the per-request CSV. Kept apart from the measuring (``loadtest.continuous``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.report import Table, write_csv
from loadtest.stats import ms, ratio

if TYPE_CHECKING:
    from loadtest.continuous import ContinuousOptions, HeadOfLine, Measured, RateRun

#: The two sides, in the order the runtime's ``--scheduler`` names them.
SCHEDULERS = ("static", "continuous")
#: Targets of the issue "Continuous batching".
TTFT_P99_FACTOR = 5.0
SHORT_BEHIND_LONG_MAX = 2.0
#: Below saturation both sides carry the offered load, so their throughputs tie up to noise (the last answer's
#: latency); continuous within this fraction below static still counts as ">= static".
THROUGHPUT_TIE = 0.05


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else "PASS" if passed else "MISS"


def _targets(runs: Sequence[tuple[RateRun, RateRun]], heads: Sequence[HeadOfLine]) -> dict[str, bool | None]:
    throughput = [ratio(c.tokens_per_s, s.tokens_per_s) for s, c in runs]
    static, continuous = runs[-1] if runs else (None, None)
    ttft = None if static is None or continuous is None else ratio(continuous.ttft(99), static.ttft(99))
    hol = heads[SCHEDULERS.index("continuous")].ratio
    return {
        "continuous_throughput_ge_static_every_rate": None
        if not throughput or None in throughput
        else all(r is not None and r >= 1 - THROUGHPUT_TIE for r in throughput),
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate": None if ttft is None else ttft <= 1 / TTFT_P99_FACTOR,
        "short_behind_long_ratio_continuous_le_2": None if hol is None else hol <= SHORT_BEHIND_LONG_MAX,
    }


def summarise(measured: Measured, options: ContinuousOptions) -> dict[str, Any]:
    rates = []
    for static, continuous in measured.runs:
        row: dict[str, Any] = {
            "rate_rps": static.rate,
            "requests": len(static.arrivals),
            "offered_tokens_per_s": sum(a.max_tokens for a in static.arrivals) / options.duration_s,
        }
        for side in (static, continuous):
            s = side.scheduler
            row |= {
                f"tokens_per_s_{s}": side.tokens_per_s,
                f"ttft_p50_ms_{s}": ms(side.ttft(50)),
                f"ttft_p99_ms_{s}": ms(side.ttft(99)),
                f"latency_p50_ms_{s}": ms(side.latency(50)),
                f"latency_p99_ms_{s}": ms(side.latency(99)),
                f"seconds_{s}": side.seconds,
                f"completion_tokens_{s}": side.completion_tokens,
                f"late_ms_{s}": ms(side.late_s),
                f"errors_{s}": side.errors,
            }
        row["throughput_ratio"] = ratio(continuous.tokens_per_s, static.tokens_per_s)
        row["ttft_p99_ratio"] = ratio(continuous.ttft(99), static.ttft(99))
        rates.append(row)
    summary: dict[str, Any] = {"rates": rates}
    for head in measured.heads:
        s = head.scheduler
        summary |= {
            f"short_alone_ms_{s}": ms(head.alone_median),
            f"short_behind_long_ms_{s}": ms(head.behind_median),
            f"short_behind_long_ratio_{s}": head.ratio,
            f"short_behind_long_overlapped_{s}": head.overlapped,
        }
    summary["targets"] = _targets(measured.runs, measured.heads)
    summary |= {f"scheduler_reported_{s}": measured.reported.get(options.model(s)) for s in SCHEDULERS}
    errors = sum(s.errors + c.errors for s, c in measured.runs) + sum(h.errors for h in measured.heads)
    summary |= {
        "duration_s": options.duration_s,
        "seed": options.seed,
        "output_tokens": [options.min_output_tokens, options.max_output_tokens],
        "output_scale": options.output_scale,
        "short_tokens": options.short_tokens,
        "long_tokens": options.long_tokens,
        "repeat": options.repeat,
        "max_batch_size": options.max_batch_size,
        "max_batch_delay": options.max_batch_delay,
        "engine": options.engine,
        "device": options.device,
        "errors": errors,
    }
    return summary


def _times(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


def tables(summary: dict[str, Any], options: ContinuousOptions) -> list[Table]:
    load = Table(
        f"continuous batching: one replica per scheduler, Poisson arrivals for {options.duration_s:g} s per rate "
        f"(seed {options.seed}), max_tokens from the Azure code trace in [{options.min_output_tokens}, "
        f"{options.max_output_tokens}], batches of up to {options.max_batch_size}",
        ["rate req/s", "scheduler", "requests", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "latency p99 ms", "errors"],
    )
    for row in summary["rates"]:
        for s in SCHEDULERS:
            load.add(row["rate_rps"], s, row["requests"], row[f"tokens_per_s_{s}"], row[f"ttft_p50_ms_{s}"],
                     row[f"ttft_p99_ms_{s}"], row[f"latency_p99_ms_{s}"], row[f"errors_{s}"])  # fmt: skip
        load.add(row["rate_rps"], "continuous/static", None, _times(row["throughput_ratio"]), None,
                 _times(row["ttft_p99_ratio"]), None, None)  # fmt: skip
    head = Table(
        f"short behind long: a {options.short_tokens}-token request alone, then behind one "
        f"{options.long_tokens}-token request (median of {options.repeat})",
        ["scheduler", "alone ms", "behind long ms", "ratio", "long still running"],
    )
    for s in SCHEDULERS:
        head.add(s, summary[f"short_alone_ms_{s}"], summary[f"short_behind_long_ms_{s}"],
                 _times(summary[f"short_behind_long_ratio_{s}"]),
                 f"{summary[f'short_behind_long_overlapped_{s}']}/{options.repeat}")  # fmt: skip
    targets = Table("targets (issue: Continuous batching)", ["result", "target", "measured"])
    verdicts = summary["targets"]
    ratios = " ".join(_times(r["throughput_ratio"]) or "-" for r in summary["rates"])
    targets.add(_verdict(verdicts["continuous_throughput_ge_static_every_rate"]),
                f"continuous tokens/s >= static at every rate (within {THROUGHPUT_TIE:.0%} noise)",
                f"continuous/static: {ratios}")  # fmt: skip
    highest = summary["rates"][-1] if summary["rates"] else {}
    targets.add(_verdict(verdicts["ttft_p99_continuous_le_fifth_of_static_at_highest_rate"]),
                f"TTFT p99 continuous <= 1/{TTFT_P99_FACTOR:g} of static at the highest rate",
                f"{_times(highest.get('ttft_p99_ratio')) or '-'} at {highest.get('rate_rps', '-')} req/s")  # fmt: skip
    targets.add(_verdict(verdicts["short_behind_long_ratio_continuous_le_2"]),
                f"short_behind_long_ratio continuous <= {SHORT_BEHIND_LONG_MAX:g}",
                f"{_times(summary['short_behind_long_ratio_continuous']) or '-'} "
                f"(static {_times(summary['short_behind_long_ratio_static']) or '-'})")  # fmt: skip
    return [load, head, targets]


def write_requests(measured: Measured, path: Path) -> None:
    rows = []
    for pair in measured.runs:
        for side in pair:
            for index, (arrival, outcome) in enumerate(zip(side.arrivals, side.outcomes, strict=True)):
                rows.append([
                    side.rate, side.scheduler, index, f"{arrival.at_s:.4f}", arrival.prompt_tokens,
                    arrival.max_tokens, None if outcome is None else outcome.error or "ok",
                    None if outcome is None else outcome.completion_tokens,
                    None if outcome is None else outcome.ttft_s, None if outcome is None else outcome.latency_s,
                ])  # fmt: skip
    header = ["rate_rps", "scheduler", "index", "at_s", "prompt_tokens", "max_tokens", "result", "completion_tokens",
              "ttft_s", "latency_s"]  # fmt: skip
    write_csv(path, header, rows)
