"""Local mode's secrets stay with the gateway: no password or token on a runtime's command line or in the log, no
API key in a runtime's environment, an embedded Valkey that wants its password, runtimes that answer only the
gateway (the shared token) and refuse big bodies, and no open API on an address other than loopback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import redis.exceptions

import wire
from gateway.store.embedded import EmbeddedRedis
from tests.harness import model, replica_processes, run_gateway
from tests.runtime.support import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.security]

TOKEN = "gateway-runtime-token-0123456789"
API_KEY = "sk-gateway-only-0123456789"


def _proc(pid: int, what: str) -> list[str]:
    return [part.decode() for part in Path(f"/proc/{pid}/{what}").read_bytes().split(b"\0") if part]


async def test_runtimes_get_no_secret_on_argv_nor_an_api_key_and_answer_only_the_gateway(
    redis_url: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KALTSTART_API_KEYS", API_KEY)  # what a gateway's environment may hold
    monkeypatch.setenv("KALTSTART_API_KEYS_FILE", "/run/secrets/api-keys")
    monkeypatch.setenv("REDIS_URL", redis_url)
    password = urlsplit(redis_url).password
    assert password  # the embedded Valkey's, random per start
    echo = model("echo", "unused", engine="echo", args=("--max-body-bytes", "4096"))
    body = {"model": "echo", "prompt": "hello there", "max_tokens": 2}
    caplog.set_level(logging.INFO)
    async with (
        run_gateway([echo], redis_url, cache_dir, standby=1, runtime_token=TOKEN) as gw,
        httpx.AsyncClient(timeout=60) as client,
    ):
        served = await client.post(gw.url + "/v1/completions", json=body)
        assert served.status_code == 200, served.text  # claim, probes and batch all carried the token
        (replica,) = replica_processes(gw, "echo")
        assert replica.pid is not None and replica.url is not None
        for pid in [replica.pid, *(standby.process.pid for standby in gw.backend.standbys.idle)]:
            argv = " ".join(_proc(pid, "cmdline"))
            assert password not in argv and TOKEN not in argv, argv
            environ = dict(line.partition("=")[::2] for line in _proc(pid, "environ"))
            assert not [name for name in environ if name.startswith("KALTSTART_API_KEYS")]
            assert "REDIS_URL" not in environ
            assert API_KEY not in "".join(environ.values())
            assert environ["KALTSTART_RUNTIME_TOKEN"] == TOKEN  # what it needs, through the environment
            assert urlsplit(environ["KALTSTART_RUNTIME_ANNOUNCE_TO"]).password == password

        batch = {"model": "echo", "requests": [{"id": "r0", "prompt": "hi"}]}
        assert (await client.post(replica.url + wire.BATCH_PATH, json=batch)).status_code == 401
        wrong = {"authorization": "Bearer not-the-token-0123456789"}
        assert (await client.post(replica.url + wire.BATCH_PATH, json=batch, headers=wrong)).status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        big = {"model": "echo", "requests": [{"id": "r0", "prompt": "x" * 5000}]}
        assert (await client.post(replica.url + wire.BATCH_PATH, json=big, headers=auth)).status_code == 413
        assert (await client.get(replica.url + wire.READY_PATH)).status_code == 200  # probes stay open
        again = await client.post(gw.url + "/v1/completions", json=body)
        assert again.status_code == 200, again.text
    assert "starting replica" in caplog.text or "starting standby" in caplog.text  # the lines looked at
    assert password not in caplog.text
    assert TOKEN not in caplog.text


def test_the_embedded_valkey_wants_its_password() -> None:
    with EmbeddedRedis() as url:
        parts = urlsplit(url)
        assert parts.password and len(parts.password) >= 24
        assert parts.port is not None
        anonymous = redis.Redis(host="127.0.0.1", port=parts.port)
        with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)):
            anonymous.set("stolen", "1")
        anonymous.close()
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        other = EmbeddedRedis()
        assert other.password != parts.password  # random per start
        other.stop()
        pid = _server_pid(url)
        assert parts.password not in " ".join(_proc(pid, "cmdline"))


def _server_pid(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    return int(info["process_id"])


def test_the_gateway_refuses_an_open_api_beyond_loopback(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KALTSTART_") and k != "REDIS_URL"}
    environ |= {"PYTHONPATH": str(REPO_ROOT), "KALTSTART_HOST": "0.0.0.0", "KALTSTART_PORT": "0"}
    environ["KALTSTART_CONFIG"] = str(REPO_ROOT / "kaltstart.toml")
    refused = subprocess.run(
        [sys.executable, "-m", "gateway"],
        check=False,
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2, refused.stderr
    assert "KALTSTART_ALLOW_ANONYMOUS=true" in refused.stderr
    assert "Traceback" not in refused.stderr
