"""``bench overhead``, ``bench relay``, ``bench upstream``, ``bench batching``, ``bench structured``, ``bench
lora``, ``bench coldstart``, ``bench pool``, ``bench continuous``, ``bench library`` and ``gpu`` run end to end on
tiny inputs and report the figures they promise. How fast anything is, is not tested: only that it is measured and
reported."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from loadtest.continuous import SCHEDULERS
from loadtest.gpu import bench_vllm
from loadtest.upstream import parse_command
from tests.loadtest.conftest import loadtest, report_row, saved_summary

pytestmark = pytest.mark.integration


async def test_overhead(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = await loadtest(
        "bench", "overhead", "--concurrency", "4", "--requests", "40", "--rounds", "2", "--max-batch-delay", "0ms",
        "--out", out,
    )  # fmt: skip
    summary = run.check().summary
    keys = {"direct_p50_ms", "gateway_p50_ms", "added_p50_ms", "added_p99_ms", "gateway_rps", "direct_rps"}
    assert keys <= set(summary)
    assert all(summary[k] is not None for k in keys)
    assert summary["added_p50_ms"] == pytest.approx(summary["gateway_p50_ms"] - summary["direct_p50_ms"], abs=0.01)
    assert summary["errors"] == 0
    assert summary["requests_per_side"] == 80
    # The gateway process's own CPU time over its 80 measured requests: ticks of 10 ms, so never 0 for 80 requests.
    assert summary["gateway_cpu_ms_per_request"] > 0
    assert "direct" in run.stdout and "gateway" in run.stdout and "ms per request" in run.stdout
    assert (out / "overhead.png").stat().st_size > 0
    # The file holds the printed summary, unchanged, and where, when and how it was measured.
    saved, provenance = saved_summary(out)
    assert saved == summary
    assert provenance["bench"] == "overhead" and provenance["arguments"]["concurrency"] == 4
    assert provenance["argv"][:2] == ["bench", "overhead"] and len(provenance["commit"]) == 40
    assert isinstance(provenance["dirty"], bool) and provenance["date"].endswith("+00:00")
    machine = provenance["machine"]
    assert machine["cores"] >= 1 and len(machine["load_before"]) == len(machine["load_after"]) == 3
    assert len((out / "samples.csv").read_text().splitlines()) == 1 + 2 * 80
    assert "80 requests per side" in report_row(out)


async def test_relay(tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "relay", "--streams", "3", "--tokens", "20", "--rounds", "2", "--max-batch-delay", "0ms",
        "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    keys = {"direct_chunks_per_s", "gateway_chunks_per_s", "relay_ratio", "ttft_added_p50_ms"}
    assert all(summary[k] is not None for k in keys)
    assert summary["relay_ratio"] == pytest.approx(
        summary["gateway_chunks_per_s"] / summary["direct_chunks_per_s"], rel=1e-3
    )
    # Every token of every stream arrives on both sides (one text chunk per echoed word, direct and relayed).
    assert summary["direct_chunks"] == summary["gateway_chunks"] == 2 * 3 * 20
    assert summary["errors"] == 0
    assert "gateway/direct" in run.stdout
    assert "3 streams of 20 tokens" in report_row(tmp_path / "out")


async def test_upstream(demo_model_dir: Path, tmp_path: Path) -> None:
    """``transformers serve`` on the demo model, started from zero by the gateway, asked directly and through it."""
    out = tmp_path / "out"
    run = await loadtest(
        "bench", "upstream", "--model", demo_model_dir, "--concurrency", "2", "--requests", "4", "--streams", "2",
        "--rounds", "1", "--max-tokens", "6", "--out", out, timeout_s=180,
    )  # fmt: skip
    summary = run.check().summary
    keys = {
        "direct_rps", "gateway_rps", "rps_ratio", "added_p50_ms", "added_p99_ms", "direct_chunks_per_s",
        "gateway_chunks_per_s", "relay_ratio", "ttft_added_p50_ms", "gateway_cpu_ms_per_request",
    }  # fmt: skip
    assert all(summary[k] is not None for k in keys), summary
    assert summary["added_p50_ms"] == pytest.approx(summary["gateway_p50_ms"] - summary["direct_p50_ms"], abs=0.01)
    assert summary["relay_ratio"] == pytest.approx(
        summary["gateway_chunks_per_s"] / summary["direct_chunks_per_s"], rel=1e-3
    )
    assert (summary["direct_errors"], summary["gateway_errors"], summary["errors"]) == (0, 0, 0)
    # Greedy: every prompt (4 non-streamed, 2 streamed) got the same text directly and through the gateway.
    assert summary["same_text"] is True and summary["texts_compared"] == 6
    assert summary["direct_chunks"] > 0 and summary["gateway_chunks"] > 0
    assert summary["upstream_model"] == str(demo_model_dir) and "transformers" in summary["server_command"]
    assert set(summary["targets"]) == {"added_p50_ms_le_2", "relay_ratio_ge_0_8"}
    assert ("PASS" in run.stdout or "MISS" in run.stdout) and "gateway/direct" in run.stdout
    assert "2 streams at once" in report_row(out)
    assert len((out / "samples.csv").read_text().splitlines()) == 1 + 2 * 4
    config = (out / "upstream.toml").read_text()
    assert 'protocol = "openai"' in config and "max-replicas = 1" in config


@pytest.mark.parametrize(
    ("command", "refused"),
    [("", "empty"), ("serve --port 80", "{port}"), ("serve --port {port} {weights}", "weights")],
)
def test_upstream_refuses_a_server_command_it_cannot_fill_in(command: str, refused: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=refused):
        parse_command(command)
    assert parse_command("vllm serve {source} --port {port} --served-model-name '{model}'")[-1] == "{model}"


async def test_batching(tiny_llama: Path, tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "batching", "--model", tiny_llama, "--device", "cpu", "--requests", "16", "--max-tokens", "4",
        "--rounds", "1", "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    assert summary["tokens_per_s_b1"] > 0 and summary["tokens_per_s_b16"] > 0
    assert summary["speedup"] == pytest.approx(summary["tokens_per_s_b16"] / summary["tokens_per_s_b1"], rel=1e-3)
    # The random model never emits end-of-sequence: every request generates exactly max_tokens, on both sides.
    assert summary["completion_tokens_b1"] == summary["completion_tokens_b16"] == 16 * 4
    assert summary["errors"] == 0
    assert (tmp_path / "out" / "batching.png").stat().st_size > 0
    assert "16 requests of 4 tokens" in report_row(tmp_path / "out")


async def test_structured(tiny_llama: Path, tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "structured", "--model", tiny_llama, "--device", "cpu", "--requests", "16", "--max-tokens", "6",
        "--rounds", "1", "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    assert summary["tokens_per_s_free"] > 0 and summary["tokens_per_s_json_schema"] > 0
    assert summary["ratio"] == pytest.approx(
        summary["tokens_per_s_json_schema"] / summary["tokens_per_s_free"], rel=1e-3
    )
    # The schema cannot be complete within max_tokens: both sides generate the same tokens.
    assert summary["completion_tokens_free"] == summary["completion_tokens_json_schema"] == 16 * 6
    assert summary["errors"] == 0
    (llguidance,) = [row for row in summary["masks"] if row["library"].startswith("llguidance")]
    assert llguidance["batch"] == 16 and llguidance["step_ms"] > 0 and llguidance["vocab"] > 0
    assert "ratio (json_schema / free)" in run.stdout and "grammar mask per decoding step" in run.stdout
    # A new schema every batch: one cold compile per batch, the same tokens, its own ratio.
    assert summary["completion_tokens_json_schema_cold"] == 16 * 6 and summary["cold_compiles"] == 1
    assert summary["ratio_cold_compile"] == pytest.approx(
        summary["tokens_per_s_json_schema_cold"] / summary["tokens_per_s_free"], rel=1e-3
    )
    # Several schemas, each compiled cold and stepped; the same thread budget (1) on both sides, pinned.
    assert set(llguidance["schemas"]) == {"flat", "nested", "enum_array", "tool_call"}
    assert all(cost["compile_ms"] > 0 and cost["step_ms"] > 0 for cost in llguidance["schemas"].values())
    assert summary["threads"] == 1 and len(summary["cpus_pinned"]) == 1
    assert summary["tokenizer_build"] is None and summary["vocab_size"] == llguidance["vocab"]
    assert "compile ms: flat" in report_row(tmp_path / "out")


async def test_structured_builds_a_larger_vocabulary(tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "structured", "--vocab-size", "3000", "--device", "cpu", "--requests", "16", "--max-tokens", "4",
        "--rounds", "1", "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    assert summary["vocab_size"] == 3000 and summary["masks"][0]["vocab"] == 3000
    assert summary["tokenizer_build"]["vocab_size"] == 3000
    assert summary["tokenizer_build"]["trained"] + summary["tokenizer_build"]["padded"] == 3000
    assert summary["errors"] == 0 and summary["completion_tokens_free"] == 16 * 4


async def test_structured_refuses_a_vocab_size_with_a_model(tiny_llama: Path, tmp_path: Path) -> None:
    run = await loadtest("bench", "structured", "--model", tiny_llama, "--vocab-size", "3000")
    assert run.returncode != 0 and "--vocab-size" in run.stderr


async def test_coldstart(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = await loadtest(
        "bench", "coldstart", "--model", tiny_llama, "--device", "cpu", "--repeat", "2", "--read-threads", "2",
        "--out", out, timeout_s=180,
    )  # fmt: skip
    both = run.check().summary
    summary, standby = both["without_standby"], both["with_standby"]
    keys = {
        "trigger_ms", "process_start_ms", "load_s", "load_gbps", "raw_read_gbps", "load_efficiency",
        "raw_read_gbps_1", "raw_read_gbps_n", "load_efficiency_n", "resident_bytes_before_load",
        "ready_to_dispatch_ms", "total_s",
    }  # fmt: skip
    assert keys <= set(summary)
    log = out / "coldstart-standby0.log"
    missing = [k for k in keys if summary[k] is None]
    assert not missing, f"phases not found: {missing}\n{log.read_text()[-3000:]}"
    assert summary["load_bytes"] == (tiny_llama / "model.safetensors").stat().st_size
    # The loader (2 threads, as told) is compared with a raw read on 1 thread (the old key, unchanged) and on 2.
    assert summary["raw_read_threads"] == 2 and summary["raw_read_gbps"] == summary["raw_read_gbps_1"]
    assert summary["load_efficiency"] == pytest.approx(summary["load_gbps"] / summary["raw_read_gbps_1"], rel=1e-3)
    assert summary["load_efficiency_n"] == pytest.approx(summary["load_gbps"] / summary["raw_read_gbps_n"], rel=1e-3)
    assert "--weight-read-threads" in (out / "coldstart-standby0.toml").read_text()
    # Eviction checked with mincore before every load and raw read: on this disk nothing stays resident.
    assert summary["resident_bytes_before_load"] == 0 and summary["page_cache_eviction_verified"] is True
    assert summary["cache_hits"] == 2  # the weights were in the node cache before each cold start
    # The phases lie in order on one time line that ends at the first token.
    assert 0 <= summary["trigger_ms"] / 1000 < summary["ttft_s"] <= summary["total_s"]
    assert summary["ready_to_dispatch_ms"] >= 0
    for phase in ("trigger", "process start", "engine start", "load", "ready to dispatch", "first token"):
        assert phase in run.stdout
    # Both gateways ran at once and their cold starts alternated: with, without, with, without.
    assert both["interleaved"] is True
    assert [r["order"] for r in standby["runs"]] == [0, 2] and [r["order"] for r in summary["runs"]] == [1, 3]
    for side in (summary, standby):
        assert side["cold_starts"] == len(side["runs"]) == 2 and side["errors"] == 0
        for record in side["runs"]:  # each run's own phases add up to its own TTFT
            assert record["phases_sum_s"] == pytest.approx(record["ttft_s"], abs=1e-4)
            assert record["resident_bytes_before_load"] == record["resident_bytes_before_raw_read"] == 0
            assert record["raw_read_gbps_1"] > 0 and record["raw_read_gbps_n"] > 0
        # The timeline shown is one run's, the median one by TTFT (the lower middle of two), not medians of phases.
        middle = side["runs"][side["median_run"]]
        assert middle["ttft_s"] == min(r["ttft_s"] for r in side["runs"])
        assert side["median_run_phases_s"] == middle["phases_s"]
    assert "each run's phases" in run.stdout and "the median run by TTFT" in run.stdout
    # The second gateway keeps a standby runtime, and each cold start claimed it instead of starting a process.
    assert standby["standby"] == 1
    assert "claimed standby runtime" in (out / "coldstart-standby1.log").read_text()
    # The standby's own start-up (process + imports): the first one and each replacement, all measured.
    assert standby["standby_startups"] == 3 and standby["standby_startup_s"] > 0
    assert (summary["standby_startup_s"], summary["standby_startups"]) == (None, 0)
    # Each claim's replacement is started after the claimed replica is ready; how long it overlapped the first token.
    for record in standby["runs"]:
        assert record["replacement_started_s"] > 0 and 0 <= record["replacement_overlap_s"] <= record["ttft_s"]
    assert standby["replacement_overlap_s"] is not None and summary["replacement_overlap_s"] is None
    assert both["ttft_ratio"] == pytest.approx(standby["ttft_s"] / summary["ttft_s"], rel=1e-3)
    assert "standby runtime: off vs on" in run.stdout and "standby_startup_s" in run.stdout
    assert saved_summary(out)[0] == both
    assert (out / "coldstart.png").stat().st_size > 0
    assert "medians of 2 interleaved cold starts each" in report_row(out)


async def test_pool(demo_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = await loadtest("bench", "pool", "--model", demo_model_dir, "--repeat", "1", "--no-warmup", "--out", out,
                         timeout_s=180)  # fmt: skip
    summary = run.check().summary
    assert summary["errors"] == 0, summary["runs"]
    for side in ("parked", "absent", "cold"):
        assert summary[f"ttft_{side}_s"] > 0 and summary[f"ttft_{side}_s_runs"] == [summary[f"ttft_{side}_s"]]
    assert summary["parked_vs_cold"] == pytest.approx(summary["ttft_parked_s"] / summary["ttft_cold_s"], rel=1e-3)
    assert summary["absent_vs_cold"] == pytest.approx(summary["ttft_absent_s"] / summary["ttft_cold_s"], rel=1e-3)
    # The sides ran one after another in one run, and /readyz saw the model parked, then woken; absent, then loaded.
    parked, absent, cold = summary["runs"]
    assert [r["order"] for r in summary["runs"]] == [0, 1, 2] and summary["interleaved"] is True
    moves = [(r["state_before"], r["state_after"], r["wakes"], r["loads"]) for r in (parked, absent)]
    assert moves == [("parked", "active", 1, 0), ("absent", "active", 0, 1)]
    assert parked["move_s"] is not None and absent["move_s"] is not None  # the pool's own wake and load lines
    # The cold side is a fresh runtime process: ready (with its engine's breakdown) before its first token.
    assert 0 < cold["ready_s"] < cold["ttft_s"] and cold["engine_s"]["imports"] > 0
    # Absent loads and cold starts read from disk: eviction checked with mincore, nothing left resident.
    assert absent["resident_bytes_before_load"] == cold["resident_bytes_before_load"] == 0
    assert summary["page_cache_eviction_verified"] is True
    # Each budget holds one model only, which is what parks and drops it.
    assert summary["weight_bytes"] < summary["pool_device_budget_bytes"] < 2 * summary["weight_bytes"]
    assert set(summary["targets"]) == {"parked_le_200ms", "parked_le_tenth_of_cold"}
    assert all(isinstance(verdict, bool) for verdict in summary["targets"].values())
    assert "parked TTFT <= 0.2 s" in run.stdout and ("PASS" in run.stdout or "MISS" in run.stdout)
    assert "pool: parked target" in (out / "pool-runtime.log").read_text()
    assert saved_summary(out)[0] == summary
    assert "medians of 1 interleaved repetitions" in report_row(out)


_CONTINUOUS_PER_SIDE = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms")


def _check_continuous(summary: dict[str, Any], rates: list[float], repeat: int) -> None:
    assert [row["rate_rps"] for row in summary["rates"]] == rates
    assert summary["repeat"] == summary["repetitions_per_rate"] == repeat
    for index, row in enumerate(summary["rates"]):
        assert row["requests"] > 0
        assert row["repetitions"] == repeat
        # Which side goes first alternates from one repetition to the next (and from one rate to the next).
        assert row["first_by_repetition"] == [SCHEDULERS[(r + index) % 2] for r in range(repeat)]
        for side in SCHEDULERS:
            assert row[f"errors_{side}"] == 0
            assert all(row[f"{key}_{side}"] > 0 for key in _CONTINUOUS_PER_SIDE), row
            assert row[f"ttft_p50_ms_{side}"] <= row[f"ttft_p99_ms_{side}"] <= row[f"latency_p99_ms_{side}"]
            assert len(row[f"tokens_per_s_{side}_runs"]) == len(row[f"ttft_p99_ms_{side}_runs"]) == repeat
            assert row[f"ttft_p99_ms_{side}_pooled"] > 0
        # The same requests on both sides, and each generates exactly its max_tokens.
        assert row["completion_tokens_static"] == row["completion_tokens_continuous"] > 0
        assert row["throughput_ratio"] == pytest.approx(
            row["tokens_per_s_continuous"] / row["tokens_per_s_static"], rel=1e-3
        )
        assert row["ttft_p99_ratio"] > 0
        for key in ("throughput_ratio", "ttft_p99_ratio"):
            assert len(row[f"{key}_runs"]) == repeat
            for spread in (f"{key}_iqr", f"{key}_ci95"):  # none from a single repetition
                assert (row[spread] is None) if repeat == 1 else (row[spread][0] <= row[spread][1]), spread
    assert len(summary["run_order"]) == repeat * len(rates) * len(SCHEDULERS)
    # The same batching window on both sides (none by default), and the output says so.
    assert summary["batching_window_ms_static"] == summary["batching_window_ms_continuous"] == 0.0
    assert summary["same_batching_window"] is True and summary["max_batch_delay"] == "0ms"
    assert summary["errors_by_scheduler"] == {side: 0 for side in SCHEDULERS}
    for side in SCHEDULERS:
        assert summary[f"short_behind_long_errors_{side}"] == 0
        assert len(summary[f"short_behind_long_ratio_{side}_runs"]) == repeat
        ci = summary[f"short_behind_long_ratio_{side}_ci95"]
        assert (ci is None) if repeat == 1 else ci[0] <= ci[1]
        assert summary[f"short_behind_long_ratio_{side}"] > 0
        assert summary[f"short_alone_ms_{side}"] > 0 and summary[f"short_behind_long_ms_{side}"] > 0
        # Each runtime was started with the scheduler it was meant to have (its own /readyz says so).
        assert summary[f"scheduler_reported_{side}"] == side
    assert set(summary["targets"]) == {
        "continuous_throughput_ge_static_every_rate",
        "ttft_p99_continuous_le_fifth_of_static_at_highest_rate",
        "short_behind_long_ratio_continuous_le_2",
    }
    assert all(isinstance(verdict, bool) for verdict in summary["targets"].values())
    assert summary["errors"] == 0


async def test_continuous_echo(tmp_path: Path) -> None:
    """The echo engine answers at once, so this checks the plumbing (two replicas, one per scheduler, open-loop
    arrivals, short behind long, the report), not what a scheduler buys."""
    out = tmp_path / "out"
    run = await loadtest(
        "bench", "continuous", "--engine", "echo", "--rates", "6,3", "--duration", "1.5", "--repeat", "2",
        "--long-tokens", "40", "--out", out, timeout_s=120,
    )  # fmt: skip
    summary = run.check().summary
    _check_continuous(summary, [3.0, 6.0], repeat=2)
    assert summary["engine"] == "echo"
    for line in ("continuous/static", "short behind long", "TTFT p99 continuous <= 1/5 of static",
                 "the same batching window on both sides: 0 ms", "95% CI"):  # fmt: skip
        assert line in run.stdout
    assert ("PASS" in run.stdout) or ("MISS" in run.stdout)
    assert saved_summary(out)[0] == summary
    assert (out / "continuous.png").stat().st_size > 0
    assert "2 alternating repetitions per rate" in report_row(out)
    requests = sum(row["requests"] for row in summary["rates"])
    assert len((out / "requests.csv").read_text().splitlines()) == 1 + 2 * 2 * requests  # sides x repetitions
    assert 'args = ["--scheduler", "static"]' in (out / "continuous.toml").read_text()


async def test_continuous_torch(tiny_llama: Path, tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "continuous", "--model", tiny_llama, "--device", "cpu", "--rates", "4", "--duration", "1",
        "--repeat", "1", "--long-tokens", "24", "--max-output-tokens", "16", timeout_s=180,
    )  # fmt: skip
    _check_continuous(run.check().summary, [4.0], repeat=1)


async def test_library_without_the_library(tiny_llama: Path, tmp_path: Path) -> None:
    """Our schedulers only (transformers' manager takes tens of seconds to set up its paged cache on CPU)."""
    out = tmp_path / "out"
    run = await loadtest(
        "bench", "library", "--model", tiny_llama, "--workloads", "64x32", "--repeat", "1", "--no-library",
        "--out", out, timeout_s=180,
    )  # fmt: skip
    summary = run.check().summary
    row = summary["workloads"]["64x32"]
    assert row["tokens_per_s_static"] > 0 and row["tokens_per_s_continuous"] > 0
    # Greedy, no end-of-sequence stop: both schedulers write the same text for every request.
    assert (row["static_equal_continuous"], row["completion_tokens"]) == (64, 64 * 32)
    assert row["tokens_per_s_library"] is None
    assert saved_summary(out)[0] == summary


async def test_gpu_refuses_without_cuda() -> None:
    run = await loadtest("gpu")
    assert run.returncode == 2
    assert "CUDA" in run.stderr


async def test_gpu_help_says_where_it_runs() -> None:
    run = (await loadtest("gpu", "--help")).check()
    assert "torch.cuda.is_available()" in run.stdout
    assert "8 minutes" in run.stdout


async def test_gpu_skips_bench_upstream_where_vllm_is_not_installed(tmp_path: Path) -> None:
    """The GPU machine has no network: vLLM is benchmarked only where it is installed, and said to be skipped
    elsewhere, with nothing started."""
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    served, summary = await bench_vllm(tmp_path / "no-model", tmp_path, "cuda")
    assert (served, summary) == ([], {"skipped": "vllm not installed"})
    assert not (tmp_path / "upstream").exists()
    assert "vLLM" in (await loadtest("gpu", "--help")).check().stdout


async def test_lora(tiny_llama: Path, tmp_path: Path) -> None:
    run = await loadtest(
        "bench", "lora", "--model", tiny_llama, "--device", "cpu", "--rounds", "1", "--max-tokens", "4",
        "--cold-loads", "2", "--out", tmp_path / "out",
    )  # fmt: skip
    summary = run.check().summary
    assert summary["tokens_per_s_base"] > 0 and summary["tokens_per_s_adapters"] > 0
    assert summary["ratio"] == pytest.approx(summary["tokens_per_s_adapters"] / summary["tokens_per_s_base"], rel=1e-3)
    assert summary["completion_tokens_base"] == summary["completion_tokens_adapters"] == 16 * 4
    assert summary["errors"] == 0 and summary["adapters"] == 8 and summary["rank"] == 16
    assert len(summary["cold_loads"]) == 2 and all(load["ms"] > 0 for load in summary["cold_loads"])
    assert summary["cold_load_ms_max"] >= summary["cold_load_ms_median"] > 0
    assert "ratio (adapters / base)" in run.stdout and "adapter cold load" in run.stdout
    assert "rank-16 adapters" in report_row(tmp_path / "out")
