"""``python -m gateway status`` as an operator runs it: a real process, against a real Valkey and a real gateway
(local backend) serving a model, and against the Valkey of a gateway started as ``make run`` starts it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.backends.local.config import LocalConfig, LocalModel, write_local_config
from gateway.processes import free_port
from gateway.settings import ModelSettings
from gateway.store import keys
from gateway.store.embedded import UrlFile
from tests.harness import model, run_gateway

pytestmark = pytest.mark.integration

#: A model whose replica never gets ready: its "server" never listens, so its requests stay queued.
NEVER_READY = (sys.executable, "-c", "import time; time.sleep(600)")


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any gateway setting, plus ``settings``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("KALTSTART_") and k != "REDIS_URL"}
    return kept | settings


async def status(env: Mapping[str, str], *args: str) -> tuple[int, str, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "status", *args, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds, for Redis state that announces no change. Polls, as ``harness.eventually``."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - nothing to wait on, see above
            await asyncio.sleep(0.02)


async def idle_for_s(redis: Redis, model_name: str) -> float:
    """Seconds since the model's last activity, by the Redis server's clock (as the queue measures it)."""
    seconds, micros = await redis.time()
    activity = await redis.get(keys.activity(model_name))
    assert activity is not None
    return (seconds * 1000 + micros // 1000 - int(activity)) / 1000


def never_ready(name: str) -> LocalModel:
    settings = ModelSettings.parse(name, {"protocol": "openai", "cold-start-timeout": "120s"})
    return LocalModel(settings, source="unused", command=NEVER_READY)


@contextlib.asynccontextmanager
async def waiting_requests(url: str, model_name: str, count: int) -> AsyncIterator[None]:
    """``count`` requests for ``model_name`` in flight from a client, cancelled (the client leaves) at the end."""
    async with httpx.AsyncClient(timeout=120) as client:
        body = {"model": model_name, "prompt": "hello", "max_tokens": 2}
        tasks = [asyncio.create_task(client.post(f"{url}/v1/completions", json=body)) for _ in range(count)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_status_shows_replicas_queue_activity_and_cold_start(
    redis_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    echo = model("echo", "unused", engine="echo", idle_timeout="600s")
    stuck = never_ready("stuck")
    config = write_local_config(tmp_path / "kaltstart.toml", LocalConfig(models=(echo, stuck), cache_dir=cache_dir))
    redis = Redis.from_url(redis_url)
    async with run_gateway([echo, stuck], redis_url, cache_dir, scale_interval_s=0.1) as gw:
        async with httpx.AsyncClient(timeout=60) as client:
            request = {"model": "echo", "prompt": "hi", "max_tokens": 2}
            answer = await client.post(f"{gw.url}/v1/completions", json=request)
        assert answer.status_code == 200, answer.text
        # What the gateway exports, and the cold start it stores, once its next passes have seen the replica.
        await until(lambda: _true(gw.metric("kaltstart_replicas", model="echo", state="ready") == 1))
        await until(lambda: _exists(redis, keys.cold_start("echo")))
        async with waiting_requests(gw.url, "stuck", 2):
            await until(lambda: _length_is(redis, keys.queue("stuck"), 2))
            env = environment(
                REDIS_URL=redis_url, KALTSTART_HOST="127.0.0.1", KALTSTART_PORT=gw.url.rsplit(":", 1)[1],
                KALTSTART_CONFIG=str(config),
            )  # fmt: skip
            idle_before = await idle_for_s(redis, "echo")
            code, out, err = await status(env, "--json")
            idle_after = await idle_for_s(redis, "echo")
        cold_start_s = float(await redis.get(keys.cold_start("echo")) or 0)
    await redis.aclose()
    assert code == 0, err
    document = json.loads(out)
    assert (document["schema"], document["backend"]) == ("kaltstart.status/v1", "local")
    models: dict[str, Any] = {m["model"]: m for m in document["models"]}
    assert set(models) == {"echo", "stuck"}
    served = models["echo"]
    assert served["replicas"] == {"desired": 1, "ready": 1}
    assert (served["queued"], served["in_flight"], served["state"]) == (0, 0, "idle")
    assert idle_before - 0.002 <= served["last_activity_age_s"] <= idle_after + 0.002
    assert 600 - idle_after - 0.002 <= served["scale_down_in_s"] <= 600 - idle_before + 0.002
    assert served["keep_alive"] | {"reason": ""} == {
        "policy": "fixed", "keep_s": 600.0, "prewarm_at_s": None, "prewarm_until_s": None, "learned": False,
        "reason": "",
    }  # fmt: skip
    assert served["cold_start_s"] == pytest.approx(cold_start_s, abs=0.001) and cold_start_s > 0
    waiting = models["stuck"]
    assert (waiting["queued"], waiting["in_flight"]) == (2, 0)
    assert waiting["replicas"] == {"desired": 1, "ready": 0}
    assert waiting["state"] == "scaling_up"
    assert waiting["cold_start_s"] is None


async def _true(value: bool) -> bool:
    return value


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def _length_is(redis: Redis, key: str, length: int) -> bool:
    return int(await redis.xlen(key)) == length


async def test_an_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path, cache_dir: Path) -> None:
    config = write_local_config(
        tmp_path / "kaltstart.toml", LocalConfig(models=(model("echo", "unused", engine="echo"),), cache_dir=cache_dir)
    )
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = environment(REDIS_URL=url, KALTSTART_CONFIG=str(config), KALTSTART_PORT=str(free_port()))
    code, out, err = await status(env)
    assert code == 1
    assert out == ""
    assert err.startswith("kaltstart status: cannot read Redis at redis://:***@127.0.0.1:")
    assert len(err.strip().splitlines()) == 1, err
    assert "hunter2" not in err and "Traceback" not in err


async def test_status_finds_the_valkey_of_make_run_with_no_flags(tmp_path: Path, cache_dir: Path) -> None:
    """``make run``: ``python -m gateway`` on its defaults with an embedded Valkey; ``status`` run beside it."""
    echo = model("echo", "unused", engine="echo")
    config = write_local_config(tmp_path / "kaltstart.toml", LocalConfig(models=(echo,), cache_dir=cache_dir))
    port = free_port()
    env = environment(KALTSTART_CONFIG=str(config), KALTSTART_PORT=str(port), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert gateway.stdout is not None
        async with asyncio.timeout(60):
            while b"kaltstart is listening" not in await gateway.stdout.readline():
                pass
        async with httpx.AsyncClient(timeout=5) as client:
            await until(lambda: _answers(client, f"http://127.0.0.1:{port}/healthz"))
        assert UrlFile(port, env).read() is not None
        code, out, err = await status(env)
    finally:
        gateway.send_signal(signal.SIGINT)  # Ctrl-C, as `make run` is stopped
        await asyncio.wait_for(gateway.wait(), 30)
    assert code == 0, err
    header, echo_row, source = out.splitlines()
    assert header.split()[:2] == ["MODEL", "READY/DESIRED"]
    assert echo_row.split()[:4] == ["echo", "0/0", "0", "0"]
    assert source == f"replicas from gateway http://127.0.0.1:{port}/metrics"
    assert UrlFile(port, env).read() is None  # removed when the gateway stopped (Ctrl-C; a SIGKILL leaves it)


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.TransportError:
        return False
