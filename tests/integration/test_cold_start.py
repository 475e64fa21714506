"""Cold starts through a real gateway and real runtime processes: announced replicas get work at once (and only
replicas the gateway started), a standby runtime is claimed and replaced, and a streaming client hears progress."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from gateway.backends.local import backend as local
from tests.harness import announce_ready, eventually, model, replica_processes, run_gateway

pytestmark = pytest.mark.integration

ECHO = {"model": "echo", "prompt": "cold start", "max_tokens": 3, "temperature": 0}


async def test_an_announced_replica_gets_work_without_its_readiness_probe(
    redis_url: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "READY_PROBE_S", 3600.0)  # the probe fails once, then would wait an hour
    async with run_gateway([model("echo", "unused", engine="echo")], redis_url, cache_dir) as gw:
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(gw.url + "/v1/completions", json=ECHO)
        assert response.status_code == 200, response.text
        assert gw.metric("kaltstart_replica_announcements_total", outcome="accepted") >= 1
        assert gw.backend.replicas("echo").ready == 0  # as far as the probe knows
        assert gw.metric("kaltstart_cold_start_seconds_count", model="echo", phase="ready_to_dispatch") == 1
        assert gw.metric("kaltstart_cold_start_seconds_count", model="echo", phase="replica_total") == 1


async def test_announcements_from_a_replica_the_gateway_did_not_start_are_refused(
    redis_url: str, cache_dir: Path
) -> None:
    async with run_gateway([model("echo", "unused", engine="echo")], redis_url, cache_dir) as gw:
        await announce_ready(redis_url, "http://127.0.0.1:9", "echo", "not json")
        await eventually(lambda: gw.metric("kaltstart_replica_announcements_total", outcome="malformed") == 1)
        assert gw.metric("kaltstart_replica_announcements_total", outcome="refused") == 1
        assert gw.endpoints.get("echo") == ()


async def test_a_cold_start_claims_the_standby_and_a_new_one_is_started(redis_url: str, cache_dir: Path) -> None:
    async with run_gateway([model("echo", "unused", engine="echo")], redis_url, cache_dir, standby=1) as gw:
        standbys = gw.backend.standbys
        await eventually(lambda: len(standbys.idle) == 1)
        standby = standbys.idle[0]
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(gw.url + "/v1/completions", json=ECHO)
        assert response.status_code == 200, response.text
        (replica,) = replica_processes(gw, "echo")
        assert replica.url == standby.url  # the standby process serves the model: no process was started
        await eventually(lambda: len(standbys.idle) == 1 and standbys.idle[0] is not standby)


async def test_a_streaming_request_hears_progress_through_a_cold_start(redis_url: str, cache_dir: Path) -> None:
    echo = model("echo", "unused", engine="echo")
    async with run_gateway([echo], redis_url, cache_dir, cold_start_progress_s=0.05) as gw:
        body = ECHO | {"stream": True}
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", gw.url + "/v1/completions", json=body) as r,
        ):
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line]
        comments = [line for line in lines[: next(i for i, x in enumerate(lines) if x.startswith("data:"))]]
        # Progress while cold, then where the time went (the headers left before it was known).
        *progress, timing = comments
        assert progress and all(line.startswith(": kaltstart: echo is cold: ") for line in progress)
        assert re.fullmatch(r": kaltstart: queue-ms=\d+ cold-start-ms=\d+", timing), timing
        assert int(timing.rsplit("=", 1)[1]) > 0, "it waited for a cold start"
        assert lines[-1] == "data: [DONE]"
        assert "".join(json.loads(x[6:])["choices"][0]["text"] for x in lines[len(comments) : -1]).strip()

        # Warm now: the official client streams as usual (it would skip comment lines too).
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused")
        stream = await sdk.completions.create(model="echo", prompt="warm", max_tokens=3, stream=True)
        assert [chunk.choices[0].text async for chunk in stream if chunk.choices]
