"""What ``bench continuous`` measured, judged and shown: the summary (per rate and per scheduler), the issue's
targets, the tables and the per-request CSV. Kept apart from the measuring (``loadtest.continuous``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.report import Table, write_csv
from loadtest.stats import bootstrap_ci, iqr, median, ms, percentile, ratio

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


Pair = tuple["RateRun", "RateRun"]


def by_rate(runs: Sequence[Pair]) -> list[list[Pair]]:
    """The (static, continuous) pairs grouped by rate, lowest rate first, repetitions in order."""
    groups: dict[float, list[Pair]] = {}
    for pair in sorted(runs, key=lambda p: (p[0].rate, p[0].repetition)):
        groups.setdefault(pair[0].rate, []).append(pair)
    return list(groups.values())


def _values(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _median_ratio(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Continuous's median over static's, of (static, continuous) values."""
    return ratio(median([c for _s, c in pairs]), median([s for s, _c in pairs]))


@dataclass(frozen=True)
class _Compared:
    """One figure on both sides over a rate's repetitions: each side's median, and continuous over static."""

    static: list[float]
    continuous: list[float]
    #: Per repetition with both figures: (static, continuous).
    pairs: list[tuple[float, float]]

    @classmethod
    def of(cls, group: Sequence[Pair], figure: Callable[[RateRun], float | None]) -> _Compared:
        both = [(figure(s), figure(c)) for s, c in group]
        return cls(
            _values(s for s, _c in both),
            _values(c for _s, c in both),
            [(s, c) for s, c in both if s is not None and c is not None],
        )

    @property
    def ratio(self) -> float | None:
        return ratio(median(self.continuous), median(self.static))

    def spread(self, key: str, seed: str) -> dict[str, Any]:
        """``<key>_runs`` (per repetition), ``<key>_iqr`` (of those), ``<key>_ci95`` (a paired bootstrap of
        ``ratio``: repetitions resampled, both sides of one repetition kept together)."""
        runs = _values(ratio(c, s) for s, c in self.pairs)
        return {
            f"{key}_runs": runs,
            f"{key}_iqr": iqr(runs),
            f"{key}_ci95": bootstrap_ci([self.pairs], lambda g: _median_ratio(g[0]), seed=seed),
        }


def _first(pair: Pair) -> str:
    return min(pair, key=lambda side: side.position).scheduler


def _ttft_p99(side: RateRun) -> float | None:
    return side.ttft(99)


def _tokens_per_s(side: RateRun) -> float | None:
    return side.tokens_per_s


def _side(group: Sequence[Pair], index: int) -> dict[str, Any]:
    """One side's figures at one rate: the median over the repetitions (errors summed, lateness the worst), and
    the spread of its throughput and TTFT p99."""
    sides = [pair[index] for pair in group]
    s = SCHEDULERS[index]

    def middle(figure: Callable[[RateRun], float | None]) -> float | None:
        return median(_values(figure(side) for side in sides))

    tokens = _values(side.tokens_per_s for side in sides)
    p99 = _values(ms(side.ttft(99)) for side in sides)
    pooled = [o.ttft_s for side in sides for o in side.ok() if o.ttft_s is not None]
    return {
        f"tokens_per_s_{s}": median(tokens),
        f"ttft_p50_ms_{s}": ms(middle(lambda side: side.ttft(50))),
        f"ttft_p99_ms_{s}": median(p99),
        f"latency_p50_ms_{s}": ms(middle(lambda side: side.latency(50))),
        f"latency_p99_ms_{s}": ms(middle(lambda side: side.latency(99))),
        f"seconds_{s}": middle(lambda side: side.seconds),
        f"completion_tokens_{s}": middle(lambda side: side.completion_tokens),
        f"late_ms_{s}": ms(max(side.late_s for side in sides)),
        f"errors_{s}": sum(side.errors for side in sides),
        f"tokens_per_s_{s}_runs": tokens,
        f"tokens_per_s_{s}_iqr": iqr(tokens),
        f"ttft_p99_ms_{s}_runs": p99,
        f"ttft_p99_ms_{s}_iqr": iqr(p99),
        f"ttft_p99_ms_{s}_pooled": ms(percentile(pooled, 99)),
    }


def _rate_row(group: Sequence[Pair], options: ContinuousOptions) -> dict[str, Any]:
    static = group[0][0]
    row: dict[str, Any] = {
        "rate_rps": static.rate,
        "requests": len(static.arrivals),
        "offered_tokens_per_s": sum(a.max_tokens for a in static.arrivals) / options.duration_s,
        "repetitions": len(group),
        "first_by_repetition": [_first(pair) for pair in group],
    }
    for index in range(len(SCHEDULERS)):
        row |= _side(group, index)
    throughput = _Compared.of(group, _tokens_per_s)
    ttft = _Compared.of(group, _ttft_p99)
    seed = f"{options.seed}:{static.rate:g}"
    row["throughput_ratio"] = throughput.ratio
    row |= throughput.spread("throughput_ratio", f"throughput:{seed}")
    row["ttft_p99_ratio"] = ttft.ratio
    row |= ttft.spread("ttft_p99_ratio", f"ttft:{seed}")
    return row


def _errors(group: Sequence[Pair]) -> int:
    return sum(side.errors for pair in group for side in pair)


def _targets(groups: Sequence[Sequence[Pair]], heads: Sequence[HeadOfLine]) -> dict[str, bool | None]:
    """The issue's targets. A comparison with errors on either side (at any rate it covers) is a MISS: failed
    requests add no tokens and no TTFT, so they would flatter whichever side had them."""
    throughput = [_Compared.of(group, _tokens_per_s).ratio for group in groups]
    highest = groups[-1] if groups else []
    ttft = _Compared.of(highest, _ttft_p99).ratio if highest else None
    head = heads[SCHEDULERS.index("continuous")]
    hol = head.ratio
    clean = sum(_errors(group) for group in groups) == 0
    return {
        "continuous_throughput_ge_static_every_rate": None
        if not throughput or None in throughput
        else clean and all(r is not None and r >= 1 - THROUGHPUT_TIE for r in throughput),
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate": None
        if ttft is None
        else _errors(highest) == 0 and ttft <= 1 / TTFT_P99_FACTOR,
        "short_behind_long_ratio_continuous_le_2": None
        if hol is None
        else head.errors == 0 and hol <= SHORT_BEHIND_LONG_MAX,
    }


def _head_row(head: HeadOfLine, seed: int) -> dict[str, Any]:
    s = head.scheduler

    def statistic(groups: Sequence[Sequence[float]]) -> float | None:
        alone, behind = groups
        return ratio(median(behind), median(alone))

    return {
        f"short_alone_ms_{s}": ms(head.alone_median),
        f"short_behind_long_ms_{s}": ms(head.behind_median),
        f"short_behind_long_ratio_{s}": head.ratio,
        f"short_behind_long_overlapped_{s}": head.overlapped,
        f"short_behind_long_ratio_{s}_runs": head.paired,
        f"short_behind_long_ratio_{s}_iqr": iqr(head.paired),
        f"short_behind_long_ratio_{s}_ci95": bootstrap_ci(
            [head.alone_s, head.behind_s], statistic, seed=f"short_behind_long:{seed}:{s}"
        ),
        f"short_behind_long_errors_{s}": head.errors,
    }


def summarise(measured: Measured, options: ContinuousOptions) -> dict[str, Any]:
    groups = by_rate(measured.runs)
    summary: dict[str, Any] = {"rates": [_rate_row(group, options) for group in groups]}
    for head in measured.heads:
        summary |= _head_row(head, options.seed)
    summary["targets"] = _targets(groups, measured.heads)
    summary |= {f"scheduler_reported_{s}": measured.reported.get(options.model(s)) for s in SCHEDULERS}
    by_side = {
        s: sum(pair[i].errors for pair in measured.runs) + sum(h.errors for h in measured.heads if h.scheduler == s)
        for i, s in enumerate(SCHEDULERS)
    }
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
        "errors": sum(by_side.values()),
        "errors_by_scheduler": by_side,
        "repetitions_per_rate": options.repeat,
        "run_order": [list(run) for run in _order(measured.runs)],
    }
    summary |= {f"batching_window_ms_{s}": ms(options.batching_window_s(s)) for s in SCHEDULERS}
    summary["same_batching_window"] = len({options.batching_window_s(s) for s in SCHEDULERS}) == 1
    return summary


def _order(runs: Sequence[Pair]) -> list[tuple[int, float, str]]:
    """(repetition, rate, scheduler) of every open-loop run, in the order it ran."""
    sides = sorted((side for pair in runs for side in pair), key=lambda side: side.position)
    return [(side.repetition, side.rate, side.scheduler) for side in sides]


def _times(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


def _with_ci(value: float | None, ci: Sequence[float] | None) -> str:
    """``1.01x [0.98-1.04x]``: a ratio and its 95% CI."""
    return f"{_times(value) or '-'} [{_span(ci, 'x') or '-'}]"


def _span(values: Sequence[float] | None, unit: str = "") -> str | None:
    """``[low, high]`` of an IQR or a CI, as ``low-high``."""
    if not values:
        return None
    low, high = values
    if unit == "x":
        return f"{low:.2f}-{high:.2f}x"
    return f"{low:.0f}-{high:.0f}" if max(abs(low), abs(high)) >= 100 else f"{low:.2f}-{high:.2f}"


def _window(summary: dict[str, Any]) -> str:
    windows = [summary[f"batching_window_ms_{s}"] for s in SCHEDULERS]
    if summary["same_batching_window"]:
        return f"the same batching window on both sides: {windows[0]:g} ms"
    return "UNEQUAL batching windows: " + ", ".join(f"{s} {w:g} ms" for s, w in zip(SCHEDULERS, windows, strict=True))


def _load_table(summary: dict[str, Any], options: ContinuousOptions) -> Table:
    load = Table(
        f"continuous batching: one replica per scheduler, Poisson arrivals for {options.duration_s:g} s per rate "
        f"(seed {options.seed}), max_tokens from the Azure code trace in [{options.min_output_tokens}, "
        f"{options.max_output_tokens}], batches of up to {options.max_batch_size}, {_window(summary)}; "
        f"medians of {options.repeat} repetitions (IQR: their 25th-75th percentiles), errors summed",
        ["rate req/s", "scheduler", "requests", "tokens/s", "tokens/s IQR", "TTFT p50 ms", "TTFT p99 ms",
         "TTFT p99 IQR", "latency p99 ms", "errors"],
    )  # fmt: skip
    for row in summary["rates"]:
        for s in SCHEDULERS:
            load.add(row["rate_rps"], s, row["requests"], row[f"tokens_per_s_{s}"], _span(row[f"tokens_per_s_{s}_iqr"]),
                     row[f"ttft_p50_ms_{s}"], row[f"ttft_p99_ms_{s}"], _span(row[f"ttft_p99_ms_{s}_iqr"]),
                     row[f"latency_p99_ms_{s}"], row[f"errors_{s}"])  # fmt: skip
        load.add(row["rate_rps"], "continuous/static", None, _times(row["throughput_ratio"]),
                 _span(row["throughput_ratio_iqr"], "x"), None, _times(row["ttft_p99_ratio"]),
                 _span(row["ttft_p99_ratio_iqr"], "x"), None, None)  # fmt: skip
    return load


def _ratio_table(summary: dict[str, Any], options: ContinuousOptions) -> Table:
    spread = Table(
        f"continuous/static with its spread over {options.repeat} repetitions: IQR of the per-repetition ratios, "
        "95% CI a seeded paired bootstrap of the ratio of medians; who went first in each repetition",
        ["rate req/s", "tokens/s ratio", "IQR", "95% CI", "TTFT p99 ratio", "IQR", "95% CI", "first"],
    )
    for row in summary["rates"]:
        first = " ".join(s[0] for s in row["first_by_repetition"])  # s(tatic) or c(ontinuous)
        spread.add(row["rate_rps"], _times(row["throughput_ratio"]), _span(row["throughput_ratio_iqr"], "x"),
                   _span(row["throughput_ratio_ci95"], "x"), _times(row["ttft_p99_ratio"]),
                   _span(row["ttft_p99_ratio_iqr"], "x"), _span(row["ttft_p99_ratio_ci95"], "x"), first)  # fmt: skip
    return spread


def _head_table(summary: dict[str, Any], options: ContinuousOptions) -> Table:
    head = Table(
        f"short behind long: a {options.short_tokens}-token request alone, then behind one "
        f"{options.long_tokens}-token request (median of {options.repeat})",
        ["scheduler", "alone ms", "behind long ms", "ratio", "IQR", "95% CI", "long still running", "errors"],
    )
    for s in SCHEDULERS:
        head.add(s, summary[f"short_alone_ms_{s}"], summary[f"short_behind_long_ms_{s}"],
                 _times(summary[f"short_behind_long_ratio_{s}"]),
                 _span(summary[f"short_behind_long_ratio_{s}_iqr"], "x"),
                 _span(summary[f"short_behind_long_ratio_{s}_ci95"], "x"),
                 f"{summary[f'short_behind_long_overlapped_{s}']}/{options.repeat}",
                 summary[f"short_behind_long_errors_{s}"])  # fmt: skip
    return head


def _errors_note(errors: int) -> str:
    return f", {errors} errors: no PASS" if errors else ""


def _targets_table(summary: dict[str, Any]) -> Table:
    targets = Table("targets (issue: Continuous batching; errors on a side compared make it a MISS)",
                    ["result", "target", "measured"])  # fmt: skip
    verdicts = summary["targets"]
    rows = summary["rates"]
    ratios = " ".join(_with_ci(r["throughput_ratio"], r["throughput_ratio_ci95"]) for r in rows)
    all_errors = sum(r[f"errors_{s}"] for r in rows for s in SCHEDULERS)
    targets.add(_verdict(verdicts["continuous_throughput_ge_static_every_rate"]),
                f"continuous tokens/s >= static at every rate (within {THROUGHPUT_TIE:.0%} noise)",
                f"continuous/static [95% CI]: {ratios}{_errors_note(all_errors)}")  # fmt: skip
    highest = rows[-1] if rows else {}
    high_errors = sum(highest.get(f"errors_{s}", 0) for s in SCHEDULERS)
    ttft = _with_ci(highest.get("ttft_p99_ratio"), highest.get("ttft_p99_ratio_ci95"))
    targets.add(_verdict(verdicts["ttft_p99_continuous_le_fifth_of_static_at_highest_rate"]),
                f"TTFT p99 continuous <= 1/{TTFT_P99_FACTOR:g} of static at the highest rate",
                f"{ttft} at {highest.get('rate_rps', '-')} req/s{_errors_note(high_errors)}")  # fmt: skip
    hol = _with_ci(summary["short_behind_long_ratio_continuous"], summary["short_behind_long_ratio_continuous_ci95"])
    targets.add(_verdict(verdicts["short_behind_long_ratio_continuous_le_2"]),
                f"short_behind_long_ratio continuous <= {SHORT_BEHIND_LONG_MAX:g}",
                f"{hol} (static {_times(summary['short_behind_long_ratio_static']) or '-'})"
                f"{_errors_note(summary['short_behind_long_errors_continuous'])}")  # fmt: skip
    return targets


def tables(summary: dict[str, Any], options: ContinuousOptions) -> list[Table]:
    return [
        _load_table(summary, options),
        _ratio_table(summary, options),
        _head_table(summary, options),
        _targets_table(summary),
    ]


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
                    side.repetition,
                ])  # fmt: skip
    header = ["rate_rps", "scheduler", "index", "at_s", "prompt_tokens", "max_tokens", "result", "completion_tokens",
              "ttft_s", "latency_s", "repetition"]  # fmt: skip
    write_csv(path, header, rows)
