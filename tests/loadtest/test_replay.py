"""``replay`` end to end: against a real local gateway, against servers that fail, and interrupted mid-run."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.processes import free_port
from tests.loadtest.conftest import loadtest, report_row, serving, start_loadtest

pytestmark = pytest.mark.integration

REPLAY_KEYS = {"requests", "errors", "cold_starts", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms"}


def echo_config(tmp_path: Path, *models: str, **settings: str) -> Path:
    """A local-backend config serving ``models`` with the echo engine."""
    lines = ["[runtime]", f'cache-dir = "{tmp_path / "cache"}"']
    for name in models:
        lines += [f"[models.{name}]", 'source = "none"', 'engine = "echo"']
        lines += [f'{key.replace("_", "-")} = "{value}"' for key, value in settings.items()]
    config = tmp_path / "echo.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


async def test_replay_against_a_local_gateway(tmp_path: Path) -> None:
    config = echo_config(tmp_path, "echo-a", "echo-b", idle_timeout="1s")
    out = tmp_path / "out"
    run = await loadtest(
        "replay", "--config", config, "--scale-interval", "0.2", "--out", out,
        "--trace", "sporadic", "--bursts", "2", "--burst-requests", "4", "--burst-seconds", "0.3",
        "--gap-seconds", "2", "--prompt-tokens", "12", "--output-tokens", "6",
    )  # fmt: skip
    summary = run.check().summary
    assert set(summary) >= REPLAY_KEYS
    assert (summary["requests"], summary["errors"], summary["errors_by_status"]) == (8, 0, {})
    assert summary["cold_starts"] >= 1  # the first burst found both models at zero
    assert summary["cold_requests"] >= 1
    assert 0 < summary["ttft_p50_ms"] <= summary["p50_ms"] <= summary["p99_ms"]
    assert summary["models"] == ["echo-a", "echo-b"]
    assert summary["tokens_per_s"] > 0
    assert "replay" in run.stdout.splitlines()[0]
    for name in ("requests.csv", "replicas.csv", "replay.png", "summary.json", "gateway.log"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "requests.csv").read_text().splitlines()) == 1 + 8
    assert "8 requests in" in report_row(out)


def flaky_app() -> Starlette:
    """Answers completions in turn with 429, 500, a stream cut short, a stream with an error event, and a good
    stream. Has no /metrics."""
    turns = itertools.cycle(["429", "500", "cut", "error", "ok"])

    def events(*payloads: object) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            for payload in payloads:
                yield f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n".encode()

        return body()

    chunk = {"choices": [{"index": 0, "text": "hi", "finish_reason": None}]}

    async def completions(request: Request) -> Response:
        turn = next(turns)
        if turn in ("429", "500"):
            return JSONResponse({"error": {"message": "no"}}, status_code=int(turn))
        if turn == "cut":
            return StreamingResponse(events(chunk), media_type="text/event-stream")
        if turn == "error":
            return StreamingResponse(events(chunk, {"error": {"message": "boom"}}, "[DONE]"))
        return StreamingResponse(events(chunk, "[DONE]"), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


async def test_replay_reports_what_a_failing_server_answers() -> None:
    async with serving(flaky_app()) as url:
        run = await loadtest(
            "replay", "--url", url, "--models", "x", "--trace", "sporadic", "--bursts", "1",
            "--burst-requests", "10", "--burst-seconds", "0.5",
        )  # fmt: skip
    summary = run.check().summary
    assert summary["requests"] == 10
    assert summary["errors_by_status"] == {"429": 2, "500": 2, "stream_error": 4}
    assert (summary["ok"], summary["errors"]) == (2, 8)
    assert summary["cold_starts"] is None  # no /metrics: unknown, not zero
    assert summary["cold_requests"] is None


async def test_replay_without_streaming() -> None:
    async def completions(request: Request) -> Response:
        body = await request.json()
        assert "stream" not in body
        return JSONResponse({"choices": [{"text": "a b"}], "usage": {"completion_tokens": body["max_tokens"]}})

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    async with serving(app) as url:
        run = await loadtest(
            "replay", "--url", url, "--models", "x", "--no-stream", "--trace", "sporadic", "--bursts", "1",
            "--burst-requests", "4", "--burst-seconds", "0.1", "--output-tokens", "5",
        )  # fmt: skip
    summary = run.check().summary
    assert (summary["ok"], summary["errors"]) == (4, 0)
    assert summary["ttft_p50_ms"] is None  # no stream, no first token
    assert summary["p50_ms"] > 0 and summary["tokens_per_s"] > 0


async def test_replay_reports_an_unreachable_gateway() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = await loadtest("replay", "--url", url, "--models", "x", "--trace", "sporadic", "--bursts", "1",
                         "--burst-requests", "3", "--burst-seconds", "0.1")  # fmt: skip
    summary = run.check().summary
    assert summary["errors_by_status"] == {"connection_error": 3}
    assert summary["p50_ms"] is None


async def test_replay_reports_a_model_that_never_starts(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(
        f'[runtime]\ncache-dir = "{tmp_path / "cache"}"\n'
        '[models.broken]\nsource = "/nonexistent/model"\ncold-start-timeout = "1s"\n'
    )
    run = await loadtest("replay", "--config", config, "--trace", "sporadic", "--bursts", "1",
                         "--burst-requests", "3", "--burst-seconds", "0.1")  # fmt: skip
    summary = run.check().summary
    # The gateway's cold-start timeout: streaming requests that meet a cold start get their headers (200) at once,
    # then the error as an event.
    assert summary["errors_by_status"] == {"stream_error:cold_start_timeout": 3}
    assert summary["cold_starts"] == 1
    assert summary["cold_requests"] == 3


def _processes_mentioning(marker: str) -> Iterator[str]:
    """Command lines of the processes whose command line or environment mentions ``marker`` (a path unique to
    one test): the gateway (its config), its Valkey (inherited environment), its runtimes (their cache)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline + environ:
            yield cmdline.replace(b"\0", b" ").decode(errors="replace")


async def _until_a_runtime_runs(marker: str, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if any("-m runtime" in p for p in _processes_mentioning(marker)):
                return
            await asyncio.sleep(0.1)  # other processes' state: polled, with a deadline


async def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    config = echo_config(tmp_path, "echo", idle_timeout="600s")
    marker = str(tmp_path)
    process = await start_loadtest(
        "replay", "--config", config, "--trace", "sporadic", "--bursts", "2", "--burst-requests", "1",
        "--gap-seconds", "120",
    )  # fmt: skip
    try:
        await _until_a_runtime_runs(marker, timeout_s=30)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()
    assert list(_processes_mentioning(marker)) == []
