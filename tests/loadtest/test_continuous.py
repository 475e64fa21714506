"""``bench continuous``: its arrivals and lengths, its figures and its PASS/MISS verdicts, on made-up outcomes
(the end-to-end runs are in test_bench.py)."""

from __future__ import annotations

import argparse
import itertools
import statistics

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
    summarise,
    tables,
)

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


def _run(scheduler: str, rate: float, ttft_s: float, seconds: float, failed: int = 0) -> RateRun:
    """Ten requests of 20 tokens at ``rate``: ``failed`` of them failed, the others had their first token after
    ``ttft_s``."""
    schedule = [Arrival(i / rate, 10, 20) for i in range(10)]
    outcomes: list[Outcome | None] = [Outcome(200, None, ttft_s + 0.5, ttft_s, 20)] * (10 - failed)
    outcomes += [Outcome(None, "timeout", 60.0)] * failed
    return RateRun(scheduler, rate, schedule, outcomes, seconds=seconds)


def _measured(static_ttft_s: float, continuous_ttft_s: float, continuous_s: float) -> Measured:
    slow = (_run("static", 1.0, 0.1, 10.0), _run("continuous", 1.0, 0.1, continuous_s))
    fast = (_run("static", 10.0, static_ttft_s, 4.0), _run("continuous", 10.0, continuous_ttft_s, 1.8, failed=1))
    heads = [
        HeadOfLine("static", alone_s=[0.02, 0.03, 0.02], behind_s=[1.2, 1.0, 1.1], overlapped=0),
        HeadOfLine("continuous", alone_s=[0.02] * 3, behind_s=[0.03] * 3, overlapped=3),
    ]
    return Measured([slow, fast], heads, {"demo-static": "static", "demo-continuous": "continuous"})


def test_figures_and_verdicts() -> None:
    options = ContinuousOptions(rates=(1.0, 10.0))
    summary = summarise(_measured(static_ttft_s=2.0, continuous_ttft_s=0.1, continuous_s=10.2), options)
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
    assert summary["targets"] == {
        "continuous_throughput_ge_static_every_rate": True,
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate": True,
        "short_behind_long_ratio_continuous_le_2": True,
    }
    rendered = "\n".join(t.render() for t in tables(summary, options))
    assert rendered.count("PASS") == 3 and "MISS" not in rendered

    worse = summarise(_measured(static_ttft_s=0.3, continuous_ttft_s=0.1, continuous_s=12.0), options)
    assert worse["targets"]["continuous_throughput_ge_static_every_rate"] is False
    assert worse["targets"]["ttft_p99_continuous_le_fifth_of_static_at_highest_rate"] is False
    assert "MISS" in "\n".join(t.render() for t in tables(worse, options))
