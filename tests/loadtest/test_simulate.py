"""``simulate``: the gateway's own scaling policy on a virtual clock, checked against arithmetic done by hand."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

import pytest

from gateway.replicas.coldstarts import smoothed
from gateway.scaling.keepalive import MIN_GAPS, MUST_SAVE, GapLearner
from loadtest.holdout import TUNED_TRACES, Split, score
from loadtest.pareto import beaten_by, beats, frontier_gap, is_fixed
from loadtest.pool import PoolPolicy, PoolSettings, pool_policies, simulate_pool
from loadtest.results import PolicyResult
from loadtest.simulate import (
    Policy,
    SimulationSettings,
    _model_settings,
    _ModelRun,
    parse_idle_timeouts,
    policies,
    report_rows,
    simulate,
)
from loadtest.trace import TraceRequest, periodic, spread
from tests.loadtest.conftest import loadtest, report_row

# Three requests at t = 0, 10 and 100 s, 5 completion tokens each at 0.02 s per token: 0.1 s of work apiece.
# A cold start takes 5 s, the autoscaler looks every 1 s, and the window runs from 0 to the last arrival (100 s).
HAND_MADE = [TraceRequest(t, 10, 5, "m") for t in (0.0, 10.0, 100.0)]
SIM = SimulationSettings(cold_start_s=5.0, scale_interval_s=1.0, seconds_per_token=0.02)


@pytest.mark.unit
def test_replica_seconds_by_hand() -> None:
    always_on, one, idle_5, idle_20 = (simulate(HAND_MADE, p, SIM) for p in policies([5.0, 20.0]))
    assert (always_on.name, one.name) == ("always-on", "one replica")

    # Always on: one warm replica over the whole window, 100 s; nobody waits.
    assert always_on.replica_seconds == pytest.approx(100.0)
    assert (always_on.cold_start_requests, always_on.cold_starts) == (0, 0)

    # Idle timeout 20 s: the first request asks for a replica at 0 (ready at 5, serves 5.0-5.1); the second is
    # served at once, 10.0-10.1. Idle from 10.1: the tick at 30 sees 19.9 s, the one at 31 sees 20.9 s, so the
    # replica goes at 31. The third request asks for a new one at 100, the window's end: 31 + 0 = 31 s.
    assert idle_20.replica_seconds == pytest.approx(31.0)
    # Requests 1 and 3 found no ready replica; two scale-ups from zero.
    assert (idle_20.cold_start_requests, idle_20.cold_starts) == (2, 2)
    # They waited 5 s each (the cold start), the second 0 s: 10 s of waiting for cold starts.
    assert sorted(idle_20.waits_s) == pytest.approx([0.0, 5.0, 5.0])
    assert idle_20.cold_start_wait_s == pytest.approx(10.0)
    assert always_on.cold_start_wait_s == 0.0

    # Idle timeout 5 s: idle from 10.1, the tick at 15 sees 4.9 s, the one at 16 sees 5.9 s: 16 s in all.
    assert idle_5.replica_seconds == pytest.approx(16.0)
    assert idle_5.cold_start_requests == 2

    rows = report_rows([always_on, one, idle_5, idle_20])
    assert [row["saved_vs_always_on"] for row in rows] == pytest.approx([0.0, 0.0, 1 - 16 / 100, 1 - 31 / 100])
    assert [row["saved_vs_one_replica"] for row in rows] == pytest.approx([0.0, 0.0, 1 - 16 / 100, 1 - 31 / 100])
    assert [row["cold_start_wait_s"] for row in rows] == pytest.approx([0.0, 0.0, 10.0, 10.0])


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
        "simulate", "--trace", csv, "--cold-start", "5", "--cold-start-spread", "0", "--idle-timeouts", "5s,20s",
        "--cold-start-costs", "", "--out", tmp_path / "out",
    )  # fmt: skip
    policies_ = run.check().summary["policies"]
    assert [p["policy"] for p in policies_] == ["always-on", "one replica", "idle 5s", "idle 20s"]
    assert [p["replica_seconds"] for p in policies_] == pytest.approx([100.0, 100.0, 16.0, 31.0])
    assert (tmp_path / "out" / "pareto.png").exists()
    assert [p["cold_start_requests"] for p in policies_] == [0, 0, 2, 2]
    assert [p["cold_start_wait_s"] for p in policies_] == pytest.approx([0.0, 0.0, 10.0, 10.0])
    assert [p["saved_vs_always_on"] for p in policies_] == pytest.approx([0.0, 0.0, 0.84, 0.69])
    # A CSV trace for one model does not depend on the seed, and is not one the constants were tuned on.
    assert {p["held_out"] for p in policies_} == {True}
    assert (tmp_path / "out" / "simulate.png").stat().st_size > 0


# The adaptive keep-alive: the same policy functions and learner the autoscaler uses, on the virtual clock.

PERIODIC = periodic(hours=6, period_s=600, per_run=2, jitter_s=5, prompt_tokens=8, output_tokens=4, seed=3)


@pytest.mark.unit
def test_adaptive_keep_alive_on_a_periodic_caller_pre_warms_and_beats_the_fixed_timeouts() -> None:
    sim = SimulationSettings(cold_start_s=20.0)
    results = [simulate(PERIODIC, p, sim) for p in policies([30.0, 60.0, 300.0, 600.0], [300.0])]
    results = [r for r in results if r.name != "one replica"]  # the same as always-on at one replica at most
    adaptive = results[-1]
    assert adaptive.name == "adaptive 300s" and adaptive.cold_start_cost_s == 300.0
    # Learning takes MIN_GAPS gaps, under the 300 s fallback: every call then meets a cold start (2 requests each).
    # From then on each call finds a replica pre-warmed for it: no more cold requests, and far fewer replica-seconds
    # than the fixed timeouts long enough to keep the replica through a gap.
    assert adaptive.cold_start_requests <= 2 * (MIN_GAPS + 1)
    assert adaptive.prewarms >= 36 - 1 - MIN_GAPS  # 36 calls
    assert beats(adaptive, results) == ["idle 300s", "idle 600s"]
    assert adaptive.replica_seconds < results[4].replica_seconds / 3
    # The short timeouts cost even less, and every one of their 72 requests meets a cold start: not dominated.
    assert beaten_by(adaptive, results) == []
    assert results[1].replica_seconds < adaptive.replica_seconds and results[1].cold_start_requests == 72


@pytest.mark.unit
def test_adaptive_keep_alive_falls_back_to_its_fixed_timeout_while_learning() -> None:
    sim = SimulationSettings(cold_start_s=20.0)
    few = PERIODIC[: 2 * 5]  # 5 calls: 4 gaps, fewer than it learns from
    adaptive = simulate(few, Policy("adaptive 300s", 0, 300.0, cold_start_cost_s=300.0), sim)
    fixed = simulate(few, Policy("idle 300s", 0, 300.0), sim)
    assert adaptive.replica_seconds == fixed.replica_seconds
    assert adaptive.cold_start_requests == fixed.cold_start_requests
    assert adaptive.prewarms == 0


@pytest.mark.unit
def test_the_fixed_line_and_dominance() -> None:
    def point(name: str, replica_s: float, cold: int, cost: float | None = None) -> PolicyResult:
        return PolicyResult(name, 0, None, replica_s, cold, 0, 0, [], [], cold_start_cost_s=cost)

    fixed = [point("always-on", 100.0, 0), point("idle 30s", 20.0, 40), point("idle 60s", 60.0, 20)]
    inside = point("a", 70.0, 10, 300.0)
    assert beats(inside, [*fixed, inside]) == []  # more replica-seconds than 60 s, more cold than always-on...
    assert frontier_gap(inside, fixed) == pytest.approx(70 / 80 - 1)  # ...but below the line between them
    better = point("b", 50.0, 20, 300.0)
    assert beats(better, fixed) == ["idle 60s"] and beaten_by(better, fixed) == []
    assert frontier_gap(point("c", 10.0, 50, 300.0), fixed) is None  # more cold requests than any fixed point


async def test_simulate_compares_traces_and_cold_starts_in_one_run(tmp_path: Path) -> None:
    run = await loadtest(
        "simulate", "--trace", "periodic,poisson:1/60", "--hours", "1", "--cold-start", "5,20",
        "--idle-timeouts", "30s,60s,300s,600s", "--cold-start-costs", "300s", "--out", tmp_path,
    )  # fmt: skip
    summary = run.check().summary
    rows = summary["policies"]
    assert {(r["trace"], r["cold_start_s"]) for r in rows} == {
        (t, c) for t in ("periodic", "poisson:1/60") for c in (5.0, 20.0)
    }
    assert len(rows) == 4 * 7  # always-on, one replica, 4 fixed timeouts, 1 adaptive
    adaptive = [r for r in rows if r["policy"] == "adaptive 300s"]
    assert all(isinstance(r["beats"], list) and isinstance(r["beaten_by"], list) for r in adaptive)
    assert summary["cold_start_s"] == [5.0, 20.0]
    assert (tmp_path / "pareto.png").exists() and not (tmp_path / "simulate.png").exists()
    assert "Pareto-better than" in run.stdout


# The fairer comparison (issue 24): a log-spaced grid of fixed timeouts, one replica always on from the first
# arrival, waiting seconds, a noisy measured cold start, and scoring on seeds and traces not tuned on.


@pytest.mark.unit
def test_the_fixed_timeouts_are_a_log_spaced_grid_from_10_s_to_1_h() -> None:
    grid = parse_idle_timeouts("log:10s:1h:13")
    assert len(grid) == 13 and grid[0] == 10.0 and grid[-1] == 3600.0
    ratios = [b / a for a, b in itertools.pairwise(grid)]
    assert all(1.5 < r < 1.75 for r in ratios)  # 360 ** (1 / 12) = 1.63, less rounding to the second
    assert parse_idle_timeouts("30s,5m") == [30.0, 300.0]


@pytest.mark.unit
def test_one_replica_is_charged_from_the_first_arrival_and_never_scales() -> None:
    # 40 requests at 50 s (two replicas' worth at 32 each), one at 100 s; the window is 50-100 s, not 0-100 s.
    trace = [TraceRequest(50.0, 10, 5, "m") for _ in range(40)] + [TraceRequest(100.0, 10, 5, "m")]
    sim = SimulationSettings(cold_start_s=5.0, max_replicas=2)
    always_on, one = (simulate(trace, p, sim) for p in policies([]))
    assert (one.name, one.max_replicas) == ("one replica", 1)
    assert one.replica_seconds == pytest.approx(50.0)
    assert max(count for _t, count in one.timeline) == 1
    # always-on (min 1, up to 2) adds a second replica for the burst, at 50 s, held until 30 s idle... and more.
    assert always_on.max_replicas == 2 and always_on.replica_seconds > 50.0
    # The second replica is asked for on the first tick after the burst; both rows keep the ready one warm.
    assert one.cold_start_requests == always_on.cold_start_requests == 0
    rows = report_rows([always_on, one])
    assert rows[0]["saved_vs_one_replica"] == pytest.approx(1 - always_on.replica_seconds / 50.0)


@pytest.mark.unit
def test_the_learner_gets_the_smoothed_measured_cold_start_not_the_true_one() -> None:
    # Requests 100 s apart, idle timeout 10 s: a cold start for each, each lasting 20 s x lognormal(sigma 0.5).
    trace = [TraceRequest(100.0 * i, 10, 5, "m") for i in range(10)]
    sim = SimulationSettings(cold_start_s=20.0, cold_start_spread=0.5, seed=7)
    policy = Policy("adaptive 60s", 0, 10.0, cold_start_cost_s=60.0)
    run = _ModelRun(_model_settings("m", policy, sim), sim, trace, 0.0, 900.0, learner=GapLearner())
    run.run()
    durations = run.cold_start_durations_s
    assert len(durations) == 10 and len(set(durations)) == 10  # each start its own length
    assert 5.0 < statistics.median(durations) < 80.0
    expected = None
    for d in durations:
        expected = smoothed(expected, d)  # as gateway.replicas.coldstarts remembers them
    assert run.measured_cold_start_s == pytest.approx(expected)
    # Seeded: the same seed gives the same starts, another seed others.
    again = _ModelRun(_model_settings("m", policy, sim), sim, trace, 0.0, 900.0, learner=GapLearner())
    again.run()
    assert again.cold_start_durations_s == durations
    other = SimulationSettings(cold_start_s=20.0, cold_start_spread=0.5, seed=8)
    assert simulate(trace, policy, other).replica_seconds != simulate(trace, policy, sim).replica_seconds
    # No spread: every start lasts the cold-start time exactly.
    exact = _ModelRun(_model_settings("m", policy, SIM), SIM, trace, 0.0, 900.0, learner=GapLearner())
    exact.run()
    assert set(exact.cold_start_durations_s) == {5.0} and exact.measured_cold_start_s == 5.0


@pytest.mark.unit
def test_held_out_means_a_trace_or_a_seed_the_constants_were_not_tuned_on() -> None:
    split = Split(seeds=(0, 1), tuned_seeds=frozenset({0}), tuned_traces=frozenset({"azure", "periodic"}))
    assert not split.held_out("periodic", 0, models=1)
    assert split.held_out("periodic", 1, models=1)  # a synthetic trace at another seed is another trace
    assert not split.held_out("azure", 1, models=1)  # one model: the seed changes nothing
    assert split.held_out("azure", 1, models=2)  # several: the seed spreads the requests differently
    assert split.held_out("poisson:1/60", 0, models=1)

    def row(held_out: bool, line: float | None, beats_: list[str], beaten: list[str]) -> dict[str, object]:
        return {"held_out": held_out, "policy": "adaptive 300s", "cold_start_cost_s": 300.0,
                "vs_fixed_line": line, "beats": beats_, "beaten_by": beaten}  # fmt: skip

    fixed_row = {"held_out": True, "policy": "idle 10s", "cold_start_cost_s": None}
    scores = score([row(False, -0.5, ["idle 60s"], []), row(True, 0.1, [], ["idle 30s"]), row(True, -0.3, [], []),
                    row(True, None, [], []), fixed_row])  # fmt: skip
    assert scores == [
        {"set": "tuning", "policy": "adaptive 300s", "panels": 1, "beats_a_fixed_point": 1,
         "beaten_by_a_fixed_point": 0, "below_fixed_line": 1, "median_vs_fixed_line": -0.5},
        {"set": "held-out", "policy": "adaptive 300s", "panels": 3, "beats_a_fixed_point": 0,
         "beaten_by_a_fixed_point": 1, "below_fixed_line": 1, "median_vs_fixed_line": pytest.approx(-0.1)},
    ]  # fmt: skip


async def test_simulate_scores_on_held_out_seeds(tmp_path: Path) -> None:
    run = await loadtest(
        "simulate", "--trace", "periodic", "--hours", "1", "--seeds", "0,1,2", "--cold-start", "20",
        "--idle-timeouts", "30s,300s", "--cold-start-costs", "300s", "--out", tmp_path,
    )  # fmt: skip
    summary = run.check().summary
    assert summary["split"] == {"seeds": [0, 1, 2], "tuned_seeds": [0], "tuned_traces": list(sorted(TUNED_TRACES))}
    assert [(t["seed"], t["held_out"]) for t in summary["traces"]] == [(0, False), (1, True), (2, True)]
    assert {(r["seed"], r["held_out"]) for r in summary["policies"]} == {(0, False), (1, True), (2, True)}
    assert [(s["set"], s["panels"]) for s in summary["score"]] == [("tuning", 1), ("held-out", 2)]
    assert summary["learner"]["must_save"] == MUST_SAVE and summary["cold_start_spread"] == 0.3
    assert "held out" in run.stdout and (tmp_path / "pareto.png").exists()
    assert "provenance" in json.loads((tmp_path / "summary.json").read_text())
    assert "held out: adaptive 300s below the fixed timeouts' line in" in report_row(tmp_path)


# The pool (``simulate --pool``): every model in one replica, under the three-state rules of gateway.scaling.parking.

POOL = PoolSettings(cold_start_s=5.0, wake_s=1.0, load_s=5.0, device_models=1, seconds_per_token=0.02)


@pytest.mark.unit
def test_pool_by_hand() -> None:
    # Park after 10 s, unload after 100 s, one model on the device at a time; 0.1 s of work per request.
    trace = [TraceRequest(t, 1, 5, m) for t, m in ((0.0, "a"), (30.0, "b"), (40.0, "a"), (200.0, "a"))]
    result = simulate_pool(trace, PoolPolicy("pool 10s/100s", 10.0, 100.0), POOL)
    pool = result.pool
    assert pool is not None
    # 0: the replica starts with a (ready at 5, served 5.0-5.1); idle from 5.1, parked at the tick at 16.
    # 30: b is loaded (ready 35, served 35.0-35.1). 40: a is parked: woken (ready 41); the device holds one
    # model, so b (idle) is parked at 40 to make room. a is idle from 41.1: parked at 52, absent at 142; b, idle
    # from 35.1, absent at 136. Every model absent at 142: the replica goes. 200: a cold start again (the window's
    # end).
    assert result.replica_seconds == pytest.approx(142.0)
    assert pool.device_model_seconds == pytest.approx(16 + 12 + 10)  # a 0-16 and 40-52, b 30-40
    assert pool.host_memory_seconds == pytest.approx(24 + 90 + 96)  # a 16-40 and 52-142, b 40-136
    assert (result.cold_start_requests, pool.wake_requests) == (3, 1)
    assert (pool.loads, pool.wakes, pool.parks, pool.unloads, pool.replica_starts) == (3, 1, 3, 2, 2)
    assert sorted(result.waits_s) == pytest.approx([1.0, 5.0, 5.0, 5.0])
    assert (result.cold_start_wait_s, pool.wake_wait_s) == pytest.approx((15.0, 1.0))
    assert [count for _t, count in result.timeline] == [0, 1, 0, 1, 1]


@pytest.mark.unit
def test_a_pool_model_with_work_is_not_parked_for_another_the_request_waits() -> None:
    # Two requests at once for a and b, one model on the device: b waits until a's batch (1 s) is done.
    trace = [TraceRequest(0.0, 1, 50, "a"), TraceRequest(0.0, 1, 50, "b")]
    result = simulate_pool(trace, PoolPolicy("pool 10s/100s", 10.0, 100.0), POOL)
    # a: loaded 0-5, served 5-6. Then a is parked for b, which is loaded 6-11 and served 11-12.
    assert sorted(result.waits_s) == pytest.approx([5.0, 11.0])
    assert result.pool is not None and result.pool.parks == 1


@pytest.mark.unit
def test_the_learned_pool_policy_runs_on_the_gateway_rules() -> None:
    trace = spread(periodic(hours=2, period_s=300, per_run=3, jitter_s=5, prompt_tokens=8, output_tokens=4, seed=1),
                   ["a", "b", "c"], 1)  # fmt: skip
    sim = PoolSettings(cold_start_s=20.0, wake_s=1.0, load_s=20.0, device_models=2)
    (learned,) = (p for p in pool_policies([10.0], [300.0], [300.0], 1.0, 20.0) if p.cold_start_cost_s)
    assert (learned.park_after_s, learned.idle_timeout_s) == (15.0, 300.0)  # the fallback: cost x wake / load, cost
    result = simulate_pool(trace, learned, sim)
    assert result.pool is not None and result.pool.wakes > 0
    assert result.cold_start_cost_s == 300.0 and not is_fixed(result)


async def test_simulate_command_pool_mode(tmp_path: Path) -> None:
    csv = tmp_path / "hand.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0000000,10,5\n"
        "2023-11-16 18:00:10.0000000,10,5\n"
        "2023-11-16 18:01:40.0000000,10,5\n"
    )
    run = await loadtest(
        "simulate", "--trace", csv, "--cold-start", "5", "--cold-start-spread", "0", "--idle-timeouts", "20s,300s",
        "--cold-start-costs", "300s", "--pool", "--wake", "1", "--park-afters", "2s", "--pool-idle-timeouts", "20s",
        "--models", "1", "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    rows = {p["policy"]: p for p in summary["policies"]}
    assert summary["models"] == ["m1"]
    # One model in the pool: loaded at 0 (ready 5, served 5.0-5.1), parked at 8; at 10 woken (ready 11, served
    # 11.0-11.1), parked at 14, unloaded at 32 with the replica. 100: a cold start.
    pool = rows["pool 2s/20s"]
    assert pool["kind"] == "pool" and pool["park_after_s"] == 2.0
    assert pool["replica_seconds"] == pytest.approx(32.0)
    assert (pool["device_model_seconds"], pool["host_memory_seconds"]) == pytest.approx((12.0, 20.0))
    assert (pool["cold_start_requests"], pool["wake_requests"], pool["waiting_s"]) == (2, 1, pytest.approx(11.0))
    assert rows["idle 20s"]["kind"] == "deployment" and rows["idle 20s"]["replica_seconds"] == pytest.approx(31.0)
    assert rows["pool learned 300s"]["kind"] == "pool"
    (check,) = summary["pool"]["target"]
    assert check["policy"] == "pool learned 300s" and check["deployment_cold_start_requests"] == 1
    assert check["gpu_share_vs_deployments"] == pytest.approx(rows["pool learned 300s"]["replica_seconds"] / 100.0)
    assert [s["policy"] for s in summary["pool"]["score"]] == ["pool learned 300s"]
    assert (tmp_path / "out" / "pool.png").stat().st_size > 0
    assert "one pool replica vs one Deployment per model" in run.stdout
