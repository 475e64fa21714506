"""``simulate``: the gateway's own scaling policy on a virtual clock, checked against arithmetic done by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.simulate import Policy, SimulationSettings, policies, report_rows, simulate
from loadtest.trace import TraceRequest
from tests.loadtest.conftest import loadtest

# Three requests at t = 0, 10 and 100 s, 5 completion tokens each at 0.02 s per token: 0.1 s of work apiece.
# A cold start takes 5 s, the autoscaler looks every 1 s, and the window runs from 0 to the last arrival (100 s).
HAND_MADE = [TraceRequest(t, 10, 5, "m") for t in (0.0, 10.0, 100.0)]
SIM = SimulationSettings(cold_start_s=5.0, scale_interval_s=1.0, seconds_per_token=0.02)


@pytest.mark.unit
def test_replica_seconds_by_hand() -> None:
    always_on, idle_5, idle_20 = (simulate(HAND_MADE, p, SIM) for p in policies([5.0, 20.0]))

    # Always on: one warm replica over the whole window, 100 s; nobody waits.
    assert always_on.replica_seconds == pytest.approx(100.0)
    assert (always_on.cold_start_requests, always_on.cold_starts) == (0, 0)

    # Idle timeout 20 s: the first request asks for a replica at 0 (ready at 5, serves 5.0-5.1); the second is
    # served at once, 10.0-10.1. Idle from 10.1: the tick at 30 sees 19.9 s, the one at 31 sees 20.9 s, so the
    # replica goes at 31. The third request asks for a new one at 100, the window's end: 31 + 0 = 31 s.
    assert idle_20.replica_seconds == pytest.approx(31.0)
    # Requests 1 and 3 found no ready replica; two scale-ups from zero.
    assert (idle_20.cold_start_requests, idle_20.cold_starts) == (2, 2)
    # They waited 5 s each (the cold start), the second 0 s.
    assert sorted(idle_20.waits_s) == pytest.approx([0.0, 5.0, 5.0])

    # Idle timeout 5 s: idle from 10.1, the tick at 15 sees 4.9 s, the one at 16 sees 5.9 s: 16 s in all.
    assert idle_5.replica_seconds == pytest.approx(16.0)
    assert idle_5.cold_start_requests == 2

    rows = report_rows([always_on, idle_5, idle_20])
    assert [row["saved_vs_always_on"] for row in rows] == pytest.approx([0.0, 1 - 16 / 100, 1 - 31 / 100])


@pytest.mark.unit
def test_scale_out_follows_queue_depth() -> None:
    # 40 requests at once, 32 per replica wanted (the gateway's default), up to 2 replicas: the request path
    # asks for 1, the first tick (same instant, after the arrivals) for ceil(40 / 32) = 2.
    burst = [TraceRequest(0.0, 10, 5, "m") for _ in range(40)] + [TraceRequest(60.0, 10, 5, "m")]
    sim = SimulationSettings(cold_start_s=5.0, max_replicas=2)
    result = simulate(burst, Policy("idle 30s", 0, 30.0), sim)
    assert max(count for _t, count in result.timeline) == 2
    assert result.cold_starts == 2  # at 0, and again at 60 after both went idle
    assert result.cold_start_requests == 41


@pytest.mark.unit
def test_models_are_scaled_independently() -> None:
    # Model a gets requests at 0 and 10, model b at 50: each pays its own cold start.
    trace = [TraceRequest(0.0, 1, 5, "a"), TraceRequest(10.0, 1, 5, "a"), TraceRequest(50.0, 1, 5, "b")]
    result = simulate(trace, Policy("idle 20s", 0, 20.0), SIM)
    # a: 0 to 31 as above; b: asked for at 50, the window ends at 50: 31 s. Always on: 2 replicas x 50 s.
    assert result.replica_seconds == pytest.approx(31.0)
    assert result.cold_start_requests == 2
    assert simulate(trace, Policy("always-on", 1, None), SIM).replica_seconds == pytest.approx(100.0)


async def test_simulate_command(tmp_path: Path) -> None:
    csv = tmp_path / "hand.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0000000,10,5\n"
        "2023-11-16 18:00:10.0000000,10,5\n"
        "2023-11-16 18:01:40.0000000,10,5\n"
    )
    run = await loadtest(
        "simulate", "--trace", csv, "--cold-start", "5", "--idle-timeouts", "5s,20s", "--out", tmp_path / "out"
    )
    policies_ = run.check().summary["policies"]
    assert [p["policy"] for p in policies_] == ["always-on", "idle 5s", "idle 20s"]
    assert [p["replica_seconds"] for p in policies_] == pytest.approx([100.0, 16.0, 31.0])
    assert [p["cold_start_requests"] for p in policies_] == [0, 2, 2]
    assert [p["saved_vs_always_on"] for p in policies_] == pytest.approx([0.0, 0.84, 0.69])
    assert (tmp_path / "out" / "simulate.png").stat().st_size > 0
