"""Traces: the bundled Azure copy, the synthetic patterns, and how traces are shaped."""

from __future__ import annotations

import argparse
import itertools

import pytest

from loadtest.trace import (
    BUNDLED_AZURE,
    Shaping,
    TraceRequest,
    add_trace_arguments,
    bursty,
    diurnal,
    load_azure,
    periodic,
    poisson,
    shape,
    sporadic,
    spread,
    trace_from_args,
)

pytestmark = pytest.mark.unit


def test_the_bundled_azure_trace_and_its_attribution() -> None:
    trace = load_azure(BUNDLED_AZURE)
    assert len(trace) == 8819
    assert trace[0].at_s == 0.0
    assert all(a.at_s <= b.at_s for a, b in itertools.pairwise(trace))
    assert 3400 < trace[-1].at_s < 3460  # about 57 minutes
    assert (trace[0].prompt_tokens, trace[0].output_tokens) == (4808, 10)
    readme = (BUNDLED_AZURE.parent / "README.md").read_text()
    assert "CC-BY 4.0" in readme
    assert "Splitwise: Efficient generative LLM inference using phase splitting" in readme


def test_shape_slices_then_compresses_caps_and_scales() -> None:
    trace = [TraceRequest(float(t), 1000, 300) for t in range(0, 100, 10)]  # at 0, 10, ..., 90 s
    shaping = Shaping(
        start_s=20, duration_s=50, speedup=10, max_requests=4, prompt_scale=0.01, output_scale=0.01, max_output_tokens=2
    )
    shaped = shape(trace, shaping)
    # Kept: 20..60 s (50 s from 20); the first 4 of those; times from the slice start, divided by 10.
    assert [r.at_s for r in shaped] == [0.0, 1.0, 2.0, 3.0]
    assert {r.prompt_tokens for r in shaped} == {10}  # 1000 * 0.01
    assert {r.output_tokens for r in shaped} == {2}  # 300 * 0.01 = 3, capped at 2


def test_scaled_token_counts_never_reach_zero() -> None:
    shaped = shape([TraceRequest(0.0, 3, 6)], Shaping(prompt_scale=0.001, output_scale=0.001))
    assert (shaped[0].prompt_tokens, shaped[0].output_tokens) == (1, 1)


def test_sporadic_bursts_are_separated_by_idle_gaps() -> None:
    trace = sporadic(bursts=3, per_burst=5, burst_s=2.0, gap_s=30.0, prompt_tokens=8, output_tokens=4, seed=1)
    assert len(trace) == 15
    windows = [(0.0, 2.0), (32.0, 34.0), (64.0, 66.0)]
    for start, end in windows:
        assert sum(start <= r.at_s <= end for r in trace) == 5
    assert trace == sporadic(3, 5, 2.0, 30.0, 8, 4, seed=1)


def test_spread_assigns_models_reproducibly() -> None:
    trace = [TraceRequest(float(t), 1, 1) for t in range(200)]
    first = spread(trace, ["a", "b", "c"], seed=7)
    assert [r.model for r in first] == [r.model for r in spread(trace, ["a", "b", "c"], seed=7)]
    assert {r.model for r in first} == {"a", "b", "c"}
    assert [r.at_s for r in first] == [r.at_s for r in trace]


def _gaps(trace: list[TraceRequest]) -> list[float]:
    return [b.at_s - a.at_s for a, b in itertools.pairwise(trace)]


def test_a_periodic_caller_comes_back_every_period() -> None:
    trace = periodic(hours=1, period_s=300, per_run=2, jitter_s=10, prompt_tokens=8, output_tokens=4, seed=1)
    assert len(trace) == 24
    long_gaps = [g for g in _gaps(trace) if g > 60]
    assert len(long_gaps) == 11 and all(280 < g < 320 for g in long_gaps)


def test_poisson_bursty_and_diurnal_arrivals() -> None:
    steady = poisson(hours=10, rate_per_s=1 / 60, prompt_tokens=8, output_tokens=4, seed=1)
    assert 540 < len(steady) < 660  # 600 expected
    sessions = bursty(hours=12, prompt_tokens=8, output_tokens=4, seed=1)
    assert sum(g > 300 for g in _gaps(sessions)) > 10  # long gaps between sessions...
    assert sum(g < 30 for g in _gaps(sessions)) > 100  # ...and requests close together within them
    day = diurnal(hours=24, peak_per_s=1 / 20, prompt_tokens=8, output_tokens=4, seed=1)
    night = [r for r in day if r.at_s % 86400 < 4 * 3600]  # 00:00-04:00, the trough at 02:00
    afternoon = [r for r in day if 12 * 3600 <= r.at_s % 86400 < 16 * 3600]
    assert len(night) < 5
    assert len(afternoon) > 100


def test_synthetic_specs_name_a_pattern_and_a_rate() -> None:
    parser = argparse.ArgumentParser()
    add_trace_arguments(parser)
    args = parser.parse_args(["--trace", "poisson:1/30", "--hours", "2"])
    assert 180 < len(trace_from_args(args)) < 300  # 240 expected
    args = parser.parse_args(["--trace", "periodic", "--period", "600"])
    assert len(trace_from_args(args)) == 6 * 6 * 3  # 6 hours by default, 3 requests a run
