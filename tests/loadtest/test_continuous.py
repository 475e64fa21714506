"""``bench continuous``: its arrivals and lengths, its figures and its PASS/MISS verdicts, on made-up outcomes
(the end-to-end runs are in test_bench.py)."""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Sequence

import pytest

from loadtest.client import Outcome
from loadtest.continuous import (
    Arrival,
    ContinuousOptions,
    HeadOfLine,
    Measured,
    RateRun,
    arrivals,
    lengths,
    parse_rates,
    run_order,
    summarise,
    tables,
)
from loadtest.stats import bootstrap_ci, iqr

pytestmark = pytest.mark.unit

OPTIONS = ContinuousOptions(rates=(2.0, 20.0), duration_s=30.0, seed=3)


def test_arrivals_are_seeded_poisson_with_the_same_lengths_at_every_rate() -> None:
    pool = lengths(OPTIONS)
    slow, fast = (arrivals(rate, pool, OPTIONS) for rate in OPTIONS.rates)
    assert arrivals(2.0, pool, OPTIONS) == slow  # the same seed, the same run
    assert arrivals(2.0, pool, ContinuousOptions(duration_s=30.0, seed=4)) != slow
    assert all(0 <= a.at_s < 30.0 for a in slow + fast)
    assert [a.at_s for a in fast] == sorted(a.at_s for a in fast)
    # About rate x duration arrivals (Poisson: within a few standard deviations), gaps averaging 1 / rate.
    assert abs(len(fast) - 600) < 5 * 600**0.5
    assert statistics.mean(b.at_s - a.at_s for a, b in itertools.pairwise(fast)) == pytest.approx(0.05, rel=0.2)
    # The n-th request has the same lengths at every rate: rates differ in spacing only.
    shared = min(len(slow), len(fast))
    assert [(a.prompt_tokens, a.max_tokens) for a in slow[:shared]] == [
        (a.prompt_tokens, a.max_tokens) for a in fast[:shared]
    ]


def test_lengths_come_from_the_trace_clamped_to_the_demo_model_s_context() -> None:
    pool = lengths(OPTIONS)
    assert len(pool) == 8819
    outputs = [out for _prompt, out in pool]
    assert min(outputs) == 6 and max(outputs) == 200  # the trace's shortest answer has 6 tokens
    assert 10 <= statistics.median(outputs) <= 20  # the code trace's answers are short
    assert min(out for _prompt, out in lengths(ContinuousOptions(output_scale=0.1))) == 4  # scaled, clamped
    assert all(4 <= prompt <= 200 and prompt + out <= 400 for prompt, out in pool)
    # The echo engine repeats its prompt: a prompt at least as long as the answer, so it can generate all of it.
    assert all(prompt >= out for prompt, out in lengths(ContinuousOptions(engine="echo")))


def test_rates_parse_sorted_and_positive() -> None:
    assert parse_rates("8, 2,4") == (2.0, 4.0, 8.0)
    for bad in ("", "a,b", "0,2", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rates(bad)


def test_every_rate_runs_repeat_times_and_the_side_that_goes_first_alternates() -> None:
    order = run_order(ContinuousOptions(rates=(8.0, 16.0, 26.0), repeat=5))
    assert len(order) == 5 * 3 * 2
    # Each repetition sweeps the rates, lowest first, both sides one after the other.
    assert [rate for _rep, rate, _s in order[:6]] == [8.0, 8.0, 16.0, 16.0, 26.0, 26.0]
    for rate in (8.0, 16.0, 26.0):
        runs = [(rep, s) for rep, r, s in order if r == rate]
        firsts = [s for rep, s in runs[::2]]
        assert all(a != b for a, b in itertools.pairwise(firsts)), (rate, firsts)  # alternates per repetition
        assert sorted(s for _rep, s in runs) == ["continuous"] * 5 + ["static"] * 5
    # The highest rate no longer always starts with static.
    assert {s for rep, r, s in order[::2] if r == 26.0} == {"static", "continuous"}


def _run(
    scheduler: str, rate: float, ttft_s: float, seconds: float, failed: int = 0, repetition: int = 0, position: int = 0
) -> RateRun:
    """Ten requests of 20 tokens at ``rate``: ``failed`` of them failed, the others had their first token after
    ``ttft_s``."""
    schedule = [Arrival(i / rate, 10, 20) for i in range(10)]
    outcomes: list[Outcome | None] = [Outcome(200, None, ttft_s + 0.5, ttft_s, 20)] * (10 - failed)
    outcomes += [Outcome(None, "timeout", 60.0)] * failed
    return RateRun(scheduler, rate, schedule, outcomes, seconds=seconds, repetition=repetition, position=position)


def _measured(static_ttft_s: float, continuous_ttft_s: float, continuous_s: float, failed: int = 0) -> Measured:
    slow = (_run("static", 1.0, 0.1, 10.0), _run("continuous", 1.0, 0.1, continuous_s, position=1))
    fast = (
        _run("static", 10.0, static_ttft_s, 4.0, position=3),
        _run("continuous", 10.0, continuous_ttft_s, 1.8, failed=failed, position=2),
    )
    heads = [
        HeadOfLine("static", alone_s=[0.02, 0.03, 0.02], behind_s=[1.2, 1.0, 1.1], overlapped=0),
        HeadOfLine("continuous", alone_s=[0.02] * 3, behind_s=[0.03] * 3, overlapped=3),
    ]
    return Measured([slow, fast], heads, {"demo-static": "static", "demo-continuous": "continuous"})


def test_figures_and_verdicts() -> None:
    options = ContinuousOptions(rates=(1.0, 10.0), repeat=1)
    summary = summarise(_measured(static_ttft_s=2.0, continuous_ttft_s=0.1, continuous_s=10.2, failed=1), options)
    slow, fast = summary["rates"]
    assert slow["tokens_per_s_static"] == pytest.approx(20.0)  # 10 x 20 tokens in 10 s
    assert slow["throughput_ratio"] == pytest.approx(10 / 10.2)  # within the tie margin: still "PASS"
    assert fast["ttft_p99_ms_static"] == pytest.approx(2000.0)
    # Failed requests count as errors and add no tokens: 9 x 20 tokens in 1.8 s.
    assert (fast["errors_continuous"], fast["tokens_per_s_continuous"]) == (1, pytest.approx(100.0))
    assert summary["errors"] == 1
    assert fast["ttft_p99_ratio"] == pytest.approx(0.05)
    assert summary["short_behind_long_ratio_static"] == pytest.approx(1.1 / 0.02)
    assert summary["short_behind_long_ratio_continuous"] == pytest.approx(1.5)
    assert summary["scheduler_reported_continuous"] == "continuous"
    assert summary["errors_by_scheduler"] == {"static": 0, "continuous": 1}
    # One failed request on the continuous side at the highest rate: the two targets it is compared in cannot pass.
    assert summary["targets"] == {
        "continuous_throughput_ge_static_every_rate": False,
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate": False,
        "short_behind_long_ratio_continuous_le_2": True,
    }
    rendered = "\n".join(t.render() for t in tables(summary, options))
    verdicts = [line.split()[0] for line in rendered.splitlines() if line.startswith(("PASS", "MISS"))]
    assert verdicts == ["MISS", "MISS", "PASS"] and "1 errors: no PASS" in rendered
    # Who went first, as run: static at 1 req/s (position 0), continuous at 10 (position 2).
    assert [row["first_by_repetition"] for row in summary["rates"]] == [["static"], ["continuous"]]
    assert summary["run_order"] == [[0, 1.0, "static"], [0, 1.0, "continuous"], [0, 10.0, "continuous"],
                                    [0, 10.0, "static"]]  # fmt: skip
    # One repetition has no spread: no IQR, no CI (not a made-up zero-width one).
    assert fast["throughput_ratio_runs"] == [pytest.approx(100.0 / 50.0)]
    assert fast["throughput_ratio_iqr"] is None and fast["throughput_ratio_ci95"] is None
    # The same batching window on both sides by default: none.
    assert (summary["batching_window_ms_static"], summary["batching_window_ms_continuous"]) == (0.0, 0.0)
    assert summary["same_batching_window"] is True

    clean = summarise(_measured(static_ttft_s=2.0, continuous_ttft_s=0.1, continuous_s=10.2), options)
    assert clean["targets"] == {
        "continuous_throughput_ge_static_every_rate": True,
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate": True,
        "short_behind_long_ratio_continuous_le_2": True,
    }
    rendered = "\n".join(t.render() for t in tables(clean, options))
    assert [line[:4] for line in rendered.splitlines() if line.startswith(("PASS", "MISS"))] == ["PASS"] * 3

    worse = summarise(_measured(static_ttft_s=0.3, continuous_ttft_s=0.1, continuous_s=12.0), options)
    assert worse["targets"]["continuous_throughput_ge_static_every_rate"] is False
    assert worse["targets"]["ttft_p99_continuous_le_fifth_of_static_at_highest_rate"] is False
    assert "\nMISS" in "\n".join(t.render() for t in tables(worse, options))


def test_a_short_behind_long_error_on_the_continuous_side_is_a_miss() -> None:
    measured = _measured(static_ttft_s=2.0, continuous_ttft_s=0.1, continuous_s=10.2)
    measured.heads[1].errors = 1
    summary = summarise(measured, ContinuousOptions(rates=(1.0, 10.0), repeat=3))
    assert summary["short_behind_long_ratio_continuous"] == pytest.approx(1.5)  # within its target, but...
    assert summary["targets"]["short_behind_long_ratio_continuous_le_2"] is False
    assert summary["short_behind_long_errors_continuous"] == 1


def test_repetitions_give_medians_and_the_spread_of_every_ratio() -> None:
    """Three repetitions at one rate: each side's figure is the median over them, each ratio the median's ratio,
    with the per-repetition ratios, their IQR and a bootstrap CI, the same every time for the same input."""
    static_s, continuous_s, continuous_ttft_s = (10.0, 8.0, 12.0), (10.0, 5.0, 10.0), (0.1, 0.2, 0.4)
    runs = [
        (_run("static", 2.0, 1.0, static_s[r], repetition=r, position=2 * r + r % 2),
         _run("continuous", 2.0, continuous_ttft_s[r], continuous_s[r], repetition=r, position=2 * r + 1 - r % 2))
        for r in range(3)
    ]  # fmt: skip
    heads = [
        HeadOfLine("static", alone_s=[0.02, 0.03, 0.02], behind_s=[1.2, 1.0, 1.1], paired=[60.0, 33.3, 55.0]),
        HeadOfLine("continuous", alone_s=[0.02, 0.02, 0.04], behind_s=[0.03, 0.05, 0.04], paired=[1.5, 2.5, 1.0]),
    ]
    options = ContinuousOptions(rates=(2.0,), repeat=3)
    summary = summarise(Measured(runs, heads, {}), options)
    (row,) = summary["rates"]
    assert row["repetitions"] == 3 and summary["repetitions_per_rate"] == 3
    assert row["first_by_repetition"] == ["static", "continuous", "static"]
    # 200 tokens per run: static 20, 25, 16.7 tokens/s (median 20), continuous 20, 40, 20 (median 20).
    assert row["tokens_per_s_static_runs"] == pytest.approx([20.0, 25.0, 200 / 12])
    assert row["tokens_per_s_static"] == pytest.approx(20.0)
    assert row["tokens_per_s_continuous"] == pytest.approx(20.0)
    assert row["throughput_ratio"] == pytest.approx(1.0)
    assert row["throughput_ratio_runs"] == pytest.approx([1.0, 1.6, 1.2])
    assert row["throughput_ratio_iqr"] == pytest.approx((1.1, 1.4))
    low, high = row["throughput_ratio_ci95"]
    assert low <= row["throughput_ratio"] <= high
    # TTFT p99 per repetition (static 1 s each time), its median, IQR, and the p99 over all repetitions' requests.
    assert row["ttft_p99_ms_continuous_runs"] == pytest.approx([100.0, 200.0, 400.0])
    assert row["ttft_p99_ms_continuous"] == pytest.approx(200.0)
    assert row["ttft_p99_ms_continuous_iqr"] == pytest.approx((150.0, 300.0))
    assert row["ttft_p99_ms_continuous_pooled"] == pytest.approx(400.0)
    assert row["ttft_p99_ratio"] == pytest.approx(0.2)
    assert row["ttft_p99_ratio_iqr"] == pytest.approx((0.15, 0.3))
    low, high = row["ttft_p99_ratio_ci95"]
    assert 0.1 <= low <= 0.2 <= high <= 0.4
    assert summary["short_behind_long_ratio_continuous_iqr"] == pytest.approx((1.25, 2.0))
    low, high = summary["short_behind_long_ratio_continuous_ci95"]
    assert low <= summary["short_behind_long_ratio_continuous"] <= high
    assert summarise(Measured(runs, heads, {}), options) == summary  # seeded: the same intervals every time
    assert row["errors_static"] == row["errors_continuous"] == 0


def test_iqr_and_a_seeded_bootstrap_ci() -> None:
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    assert iqr([3.0]) is None
    values = [float(v) for v in range(1, 21)]

    def mean(groups: Sequence[Sequence[float]]) -> float:
        return statistics.mean(groups[0])

    ci = bootstrap_ci([values], mean, seed="x")
    assert ci == bootstrap_ci([values], mean, seed="x")  # deterministic
    assert ci is not None and ci[0] < 10.5 < ci[1]
    # The mean of 1..20 has a standard error of about 1.3: a 95% interval about 2 x 1.96 x 1.3 wide.
    assert 3.5 < ci[1] - ci[0] < 6.5
    assert bootstrap_ci([[1.0]], mean, seed="x") is None  # one value: no spread to resample
