"""The Kubernetes backend against the API double: routes from annotations, scale from zero through the scale
subresource, EndpointSlices, several gateway replicas, leader-only scale-down, restarts, broken watches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client
from redis.asyncio import Redis

from gateway.queue.fence import Fence
from gateway.queue.stream import RequestQueue
from tests.harness import KubernetesGateway, eventually, run_kubernetes_gateway
from tests.kube.double import ApiDouble
from tests.kube.manifests import model_deployment, runtime_pods
from tests.kube.probes import FencedRequests, ScalerTicks

pytestmark = pytest.mark.kubernetes

FAST: dict[str, Any] = {"scale_interval_s": 0.1}
#: The TTL of a fence a test holds: far longer than a lifted fence may keep a request waiting.
FENCE_HELD_S = 30.0


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "hello kubernetes", "max_tokens": 4, "temperature": 0} | extra


def deployment(api: ApiDouble, name: str) -> dict[str, Any]:
    found = api.find("apps/v1", "Deployment", "default", name)
    assert found is not None
    return found


def replicas(api: ApiDouble, name: str) -> int:
    count: int = deployment(api, name)["spec"]["replicas"]
    return count


async def wait_replicas(api: ApiDouble, name: str, count: int, timeout_s: float = 20) -> None:
    await api.wait_for(lambda: replicas(api, name) == count or None, timeout_s, f"{name} at {count} replicas")


async def wait_models(gw: KubernetesGateway, names: set[str], timeout_s: float = 10) -> None:
    changed = asyncio.Event()
    gw.catalog.subscribe(changed.set)
    async with asyncio.timeout(timeout_s):
        while {m.name for m in gw.catalog.all()} != names:
            changed.clear()
            await changed.wait()


def scaled_down(gw: KubernetesGateway) -> float:
    return gw.metric("kaltstart_scale_writes_total", model="echo", direction="down")


@pytest.fixture
def echo_pods(api_double: ApiDouble, tmp_path: Path) -> None:
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as c:
        yield c


async def test_annotated_deployment_scales_from_zero_and_back(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, demo_model_dir: Path, tmp_path: Path,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    api_double.kubelet.command_for = runtime_pods(tmp_path / "cache", source=demo_model_dir)
    api_double.create(model_deployment("tiny", "tiny", idle_timeout="1s"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        models = (await http.get(gw.url + "/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["tiny"]

        response = await http.post(gw.url + "/v1/completions", json=body("tiny"))

        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 4
        assert replicas(api_double, "tiny") == 1
        writes = api_double.requests_for("update", "deployments/scale", "tiny")
        assert {w.body["spec"]["replicas"] for w in writes} == {1}  # (twice if a 409 made it read again)
        assert not api_double.requests_for("update", "deployments") + api_double.requests_for("patch", "deployments")
        await wait_replicas(api_double, "tiny", 0)


async def test_two_gateways_scale_up_once_and_only_the_leader_scales_down(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    api_double.create(model_deployment("echo", "echo", idle_timeout="1s"))
    generation = deployment(api_double, "echo")["metadata"]["generation"]
    async with contextlib.AsyncExitStack() as stack_a, contextlib.AsyncExitStack() as stack_b:
        a = await stack_a.enter_async_context(run_kubernetes_gateway(kubeconfig, redis_url, **FAST))
        b = await stack_b.enter_async_context(run_kubernetes_gateway(kubeconfig, redis_url, **FAST))
        answers = await asyncio.gather(
            *(http.post(gw.url + "/v1/completions", json=body("echo")) for gw in (a, b) for _ in range(4))
        )
        assert [r.status_code for r in answers] == [200] * 8
        assert deployment(api_double, "echo")["metadata"]["generation"] == generation + 1  # one effective write
        ups = [gw.metric("kaltstart_scale_writes_total", model="echo", direction="up") for gw in (a, b)]
        assert sum(ups) == 1

        await wait_replicas(api_double, "echo", 0)
        await eventually(lambda: sum(scaled_down(gw) for gw in (a, b)) == 1)
        leader, follower = (a, b) if a.backend.is_leader else (b, a)
        assert leader.backend.is_leader and not follower.backend.is_leader
        assert (scaled_down(leader), scaled_down(follower)) == (1, 0)

        await (stack_a if leader is a else stack_b).aclose()  # the leader stops; its lease lapses
        await api_double.wait_for(lambda: follower.backend.is_leader or None, 15, "the follower takes over")
        assert (await http.post(follower.url + "/v1/completions", json=body("echo"))).status_code == 200
        await wait_replicas(api_double, "echo", 0)
        await eventually(lambda: scaled_down(follower) == 1)


async def test_conflicts_are_retried_and_counts_are_never_lowered(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient, echo_pods: None,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    api_double.create(model_deployment("echo", "echo", idle_timeout="600s"))
    api_double.create(model_deployment("busy", "busy", idle_timeout="600s"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        api_double.fail_next("update", "deployments/scale", status=409)
        assert (await http.post(gw.url + "/v1/completions", json=body("echo"))).status_code == 200
        writes = api_double.requests_for("update", "deployments/scale", "echo")
        assert len(writes) >= 2 and {w.body["spec"]["replicas"] for w in writes} == {1}  # the 409 was retried
        assert replicas(api_double, "echo") == 1

        apps = client.AppsV1Api(kube_client)
        await apps.patch_namespaced_deployment_scale("busy", "default", {"spec": {"replicas": 3}})
        await wait_replicas(api_double, "busy", 3)
        await gw.wait_for(lambda: gw.backend.replicas("busy").desired == 3, 10)
        assert not await gw.backend.scale_up("busy", 2, fresh=True)
        assert (await http.post(gw.url + "/v1/completions", json=body("busy"))).status_code == 200
        assert replicas(api_double, "busy") == 3
        assert not api_double.requests_for("update", "deployments/scale", "busy")


async def test_no_scale_to_zero_while_a_request_is_queued(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    api_double.create(model_deployment("echo", "echo", replicas=1, idle_timeout="600s"))
    redis = Redis.from_url(redis_url)
    queue = RequestQueue(redis=redis, max_queue_per_model=100)
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        fenced = FencedRequests(gw.app.state.gateway.door)
        await gw.wait_for(lambda: bool(gw.endpoints.get("echo")), 20)
        # The leader has decided: the model is idle, and its fence is up while it writes the scale to zero.
        async with Fence(redis, ttl_s=FENCE_HELD_S).hold(["echo"], idle_s=0) as held:
            assert held
            request = asyncio.create_task(http.post(gw.url + "/v1/completions", json=body("echo")))
            await fenced.wait("echo", 10)  # the request reached the fence; it must wait there, not in the queue
            assert not request.done()
            assert (await queue.load("echo")).demand == 0
            assert await gw.backend.scale_down("echo", 0)
        # The fence is lifted on leaving the block, and the request hears it: it gets in and scales the model up
        # again long before the fence would have expired.
        await wait_replicas(api_double, "echo", 1, timeout_s=FENCE_HELD_S / 5)
        response = await request
        assert response.status_code == 200
        assert [w.body["spec"]["replicas"] for w in api_double.requests_for("update", "deployments/scale")] == [0, 1]
    await redis.aclose()


async def test_broken_and_expired_watches_relist(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    api_double.create(model_deployment("first", "first"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        await wait_models(gw, {"first"})
        api_double.break_watches(abrupt=True)
        api_double.create(model_deployment("second", "second"))
        await wait_models(gw, {"first", "second"})

        api_double.expire_history()
        api_double.break_watches()
        api_double.create(model_deployment("third", "third"))
        await wait_models(gw, {"first", "second", "third"})
        assert api_double.requests_for("list", "deployments")  # it listed again
        assert len(api_double.requests_for("list", "deployments")) >= 2

        response = await http.post(gw.url + "/v1/completions", json=body("third"))
        assert response.status_code == 200
        assert gw.endpoints.get("first") == ()


async def test_invalid_annotation_is_reported_and_fixing_it_needs_no_restart(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, kube_client: client.ApiClient, echo_pods: None,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    api_double.create(model_deployment("good", "good"))
    api_double.create(model_deployment("bad", "bad", idle_timeout="soon"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        await wait_models(gw, {"good"})
        events = await api_double.wait_for(
            lambda: [e for e in api_double.objects("v1", "Event", "default") if e["involvedObject"]["name"] == "bad"],
            10,
            "an Event on the bad Deployment",
        )
        assert events[0]["type"] == "Warning" and events[0]["reason"] == "InvalidAnnotation"
        assert "kaltstart.dev/idle-timeout" in events[0]["message"]
        assert (await http.post(gw.url + "/v1/completions", json=body("bad"))).status_code == 404
        assert (await http.post(gw.url + "/v1/completions", json=body("good"))).status_code == 200

        apps = client.AppsV1Api(kube_client)
        patch = {"metadata": {"annotations": {"kaltstart.dev/idle-timeout": "30s", "kaltstart.dev/models": "bad,b2"}}}
        await apps.patch_namespaced_deployment("bad", "default", patch)
        await wait_models(gw, {"good", "bad", "b2"})
        assert gw.catalog.get("bad").idle_timeout_s == 30
        assert (await http.post(gw.url + "/v1/completions", json=body("b2"))).status_code == 200
        assert replicas(api_double, "bad") == 1  # both names are served by the one Deployment


async def test_a_pending_pod_is_not_scaled_away(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    api_double.create(model_deployment("slow", "slow", idle_timeout="1s", cold_start_timeout="30s"))
    gate = api_double.kubelet.hold_pending("slow")
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        ticks = ScalerTicks(gw.scaler)
        request = asyncio.create_task(http.post(gw.url + "/v1/completions", json=body("slow")))
        await wait_replicas(api_double, "slow", 1)  # the request is queued: its enqueue came before the scale-up
        idle_timeout_over = asyncio.get_running_loop().time() + gw.catalog.get("slow").idle_timeout_s
        # Three passes ended past the idle timeout, by the leader (only it scales down), with the pod still Pending.
        await ticks.wait(3, 15, lambda: asyncio.get_running_loop().time() >= idle_timeout_over and gw.backend.is_leader)
        assert replicas(api_double, "slow") == 1
        gate.set()
        response = await request
        assert response.status_code == 200
        writes = api_double.requests_for("update", "deployments/scale")
        assert {w.body["spec"]["replicas"] for w in writes} == {1}  # (a 409 may have made it write twice)


async def test_gateway_restart_under_load_changes_no_replica_count(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    api_double.create(model_deployment("warm", "warm", replicas=1, idle_timeout="600s"))
    api_double.create(model_deployment("scaled", "scaled", replicas=2, idle_timeout="600s", max_replicas="3"))
    api_double.create(model_deployment("cold", "cold", idle_timeout="600s"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as steady:
        stop = asyncio.Event()

        async def load() -> list[int]:
            statuses = []
            while not stop.is_set():
                statuses.append((await http.post(steady.url + "/v1/completions", json=body("warm"))).status_code)
            return statuses

        traffic = asyncio.create_task(load())
        for _ in range(2):
            async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as restarted:
                assert (await http.post(restarted.url + "/v1/completions", json=body("warm"))).status_code == 200
        stop.set()
        statuses = await traffic

        assert statuses and set(statuses) == {200}
        assert (replicas(api_double, "warm"), replicas(api_double, "scaled"), replicas(api_double, "cold")) == (1, 2, 0)
        assert not api_double.requests_for("update", "deployments/scale")


async def test_two_gateways_share_a_replica_without_stalls(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    """Each gateway's dispatcher takes the work its own gateway adds (the work signal says so, and the other one is
    not woken for it); work left behind wakes the other. No request waits for a dispatcher's fallback read."""
    api_double.create(model_deployment("echo", "echo", idle_timeout="60s"))
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(run_kubernetes_gateway(kubeconfig, redis_url, **FAST))
        b = await stack.enter_async_context(run_kubernetes_gateway(kubeconfig, redis_url, **FAST))
        assert (await http.post(a.url + "/v1/completions", json=body("echo"))).status_code == 200  # cold start
        async with httpx.AsyncClient(timeout=5) as quick:  # well below the dispatchers' 10 s fallback read
            for gw in (a, b, b, a, b, a, a, b):
                assert (await quick.post(gw.url + "/v1/completions", json=body("echo"))).status_code == 200
            burst = await asyncio.gather(
                *(quick.post(gw.url + "/v1/completions", json=body("echo")) for gw in (a, b) for _ in range(12))
            )
        assert [r.status_code for r in burst] == [200] * 24
        assert all(gw.metric("kaltstart_batches_total", model="echo") > 0 for gw in (a, b))


async def test_an_adapter_named_on_a_deployment_is_routed_to_it_and_scales_it_from_zero(
    api_double: ApiDouble, kubeconfig: Path, redis_url: str, echo_pods: None, http: httpx.AsyncClient
) -> None:
    """``kaltstart.dev/adapters`` on the base's Deployment: the adapter is a model of its own (listed with its
    parent), its first request scales the base's Deployment from zero and is answered by the base's pod."""
    api_double.create(model_deployment("qwen", "qwen", adapters="support-bot=org/support-lora"))
    async with run_kubernetes_gateway(kubeconfig, redis_url, **FAST) as gw:
        await wait_models(gw, {"qwen", "support-bot"})
        models = (await http.get(gw.url + "/v1/models")).json()["data"]
        assert sorted((m["id"], m.get("parent")) for m in models) == [("qwen", None), ("support-bot", "qwen")]

        response = await http.post(gw.url + "/v1/completions", json=body("support-bot"))

        assert response.status_code == 200, response.text
        assert response.json()["model"] == "support-bot"
        assert replicas(api_double, "qwen") == 1
        assert gw.metric("kaltstart_scale_writes_total", model="support-bot", direction="up") == 1
        assert gw.endpoints.get("support-bot") == gw.endpoints.get("qwen") != ()
