"""``bench upstream``'s figures: each side's tallies, the summary, the issue's targets and the tables. Kept apart
from the measuring (``loadtest.upstream``)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.report import Table
from loadtest.stats import added_latency, difference, ms, percentile, ratio

__all__ = ["ADDED_P50_MS_MAX", "RELAY_RATIO_MIN", "Side", "summarise", "tables"]

#: The issue's goals (#25, "Benchmark"): the gateway adds at most this at p50 ...
ADDED_P50_MS_MAX = 2.0
#: ... and relays at least this fraction of the server's streamed chunks per second.
RELAY_RATIO_MIN = 0.8


@dataclass(kw_only=True)
class Side:
    """One way of asking the server (direct, or through the gateway): what it sends and what it measured."""

    name: str
    url: str
    #: Non-streamed and streamed bodies, one per prompt.
    bodies: Sequence[bytes]
    stream_bodies: Sequence[bytes]
    #: The process whose CPU time is counted over this side's non-streamed rounds (the gateway's), if any.
    pid: int | None = None
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rps_by_round: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    chunks: int = 0
    stream_seconds: float = 0.0
    chunks_by_round: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    #: (prompt, streamed) -> the texts answered to it.
    texts: dict[tuple[int, bool], set[str]] = field(default_factory=dict)

    @property
    def rps(self) -> float | None:
        return len(self.latencies) / self.seconds if self.seconds > 0 else None

    @property
    def chunks_per_s(self) -> float | None:
        return self.chunks / self.stream_seconds if self.stream_seconds > 0 else None

    def keep(self, prompt: int, streamed: bool, text: str | None) -> None:
        if text is not None:
            self.texts.setdefault((prompt, streamed), set()).add(text)


def _same_text(sides: Sequence[Side]) -> tuple[bool | None, int]:
    """Whether every prompt compared got one and the same text on both sides; how many were compared."""
    direct, gateway = sides
    compared = [key for key in direct.texts if key in gateway.texts]
    if not compared:
        return None, 0
    return all(len(direct.texts[key] | gateway.texts[key]) == 1 for key in compared), len(compared)


def summarise(sides: Sequence[Side], run: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of both sides, then ``run`` (what was run: concurrency, requests, the server ...) and the
    targets."""
    direct, gateway = sides
    t50, tg50 = percentile(direct.ttfts, 50), percentile(gateway.ttfts, 50)
    same_text, compared = _same_text(sides)
    summary: dict[str, Any] = {
        "direct_rps": direct.rps,
        "gateway_rps": gateway.rps,
        "rps_ratio": ratio(gateway.rps, direct.rps),
        **added_latency(direct.latencies, gateway.latencies),
        "direct_chunks_per_s": direct.chunks_per_s,
        "gateway_chunks_per_s": gateway.chunks_per_s,
        "relay_ratio": ratio(gateway.chunks_per_s, direct.chunks_per_s),
        "direct_ttft_p50_ms": ms(t50),
        "gateway_ttft_p50_ms": ms(tg50),
        "ttft_added_p50_ms": ms(difference(tg50, t50)),
        "direct_chunks": direct.chunks,
        "gateway_chunks": gateway.chunks,
        "same_text": same_text,
        "texts_compared": compared,
        "gateway_cpu_ms_per_request": ms(gateway.cpu_s / len(gateway.latencies)) if gateway.latencies else None,
        "direct_errors": direct.errors,
        "gateway_errors": gateway.errors,
        "errors": direct.errors + gateway.errors,
        **run,
    }
    summary["targets"] = _targets(summary)
    return summary


def _targets(summary: dict[str, Any]) -> dict[str, bool | None]:
    """PASS (True), MISS (False) or not measured (None); errors on either side make both a MISS."""
    added, relay, failed = summary["added_p50_ms"], summary["relay_ratio"], summary["errors"] > 0
    return {
        "added_p50_ms_le_2": None if added is None else not failed and added <= ADDED_P50_MS_MAX,
        "relay_ratio_ge_0_8": None if relay is None else not failed and relay >= RELAY_RATIO_MIN,
    }


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else "PASS" if passed else "MISS"


def tables(sides: Sequence[Side], summary: dict[str, Any]) -> list[Table]:
    server = f"{_server_name(summary['server_command'])} serving {summary['upstream_model']}"
    requests = Table(
        f"upstream ({server}): non-streamed, concurrency {summary['concurrency']}, {summary['requests_per_side']} "
        f"requests per side in {summary['rounds']} alternating rounds, {summary['max_tokens']} tokens each; gateway "
        f"CPU {_cpu(summary)} ms per request",
        ["side", "p50 ms", "p90 ms", "p99 ms", "req/s", "req/s by round", "errors"],
    )
    streams = Table(
        f"upstream: streamed, {summary['streams']} at once, {summary['streams_per_side']} per side",
        ["side", "chunks/s", "chunks/s by round", "TTFT p50 ms", "TTFT p99 ms", "chunks"],
    )
    for side in sides:
        requests.add(side.name, ms(percentile(side.latencies, 50)), ms(percentile(side.latencies, 90)),
                     ms(percentile(side.latencies, 99)), side.rps, _by_round(side.rps_by_round),
                     side.errors)  # fmt: skip
        streams.add(side.name, side.chunks_per_s, _by_round(side.chunks_by_round), ms(percentile(side.ttfts, 50)),
                    ms(percentile(side.ttfts, 99)), side.chunks)  # fmt: skip
    requests.add("added", summary["added_p50_ms"], None, summary["added_p99_ms"], None, None, None)
    requests.add("gateway/direct", None, None, None, summary["rps_ratio"], None, None)
    streams.add("gateway/direct", summary["relay_ratio"], None, summary["ttft_added_p50_ms"], None, None)
    return [requests, streams, _targets_table(summary)]


def _targets_table(summary: dict[str, Any]) -> Table:
    same = {True: "yes", False: "NO", None: "-"}[summary["same_text"]]
    targets = Table(
        f"targets (issue #25: Benchmark; errors on a side make it a MISS); the same text on both sides: {same} "
        f"({summary['texts_compared']} prompts compared)",
        ["result", "target", "measured"],
    )
    verdicts = summary["targets"]
    targets.add(_verdict(verdicts["added_p50_ms_le_2"]), f"added p50 <= {ADDED_P50_MS_MAX:g} ms",
                f"{_figure(summary['added_p50_ms'])} ms, {summary['errors']} errors")  # fmt: skip
    targets.add(_verdict(verdicts["relay_ratio_ge_0_8"]), f"relay_ratio >= {RELAY_RATIO_MIN:g}",
                f"{_figure(summary['relay_ratio'])}, {summary['errors']} errors")  # fmt: skip
    return targets


def _server_name(command: str) -> str:
    """``transformers serve``, ``vllm serve``, ``python -m sglang.launch_server``: the program and its sub-command."""
    words = shlex.split(command)
    shown = words[: 3 if words[1:2] == ["-m"] else 2]
    return " ".join([Path(shown[0]).name, *shown[1:]])


def _by_round(values: Sequence[float]) -> str:
    return " ".join(f"{value:.1f}" for value in values)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu(summary: dict[str, Any]) -> str:
    return _figure(summary["gateway_cpu_ms_per_request"])
