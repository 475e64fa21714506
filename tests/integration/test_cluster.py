"""A gateway on a Redis Cluster (``REDIS_URL=redis+cluster://``), with real processes: three primaries and a replica
each (``tests.clusters``), twenty echo models whose keys fall on every primary, clients with an API key (so each
request is charged to the key's account, in another slot than its model's: ``gateway.queue.keycharges``), and
runtimes that announce themselves on the cluster (``runtime.server.announce``). Every request is answered, with
its own text; nothing stays queued or in flight; no account holds anything afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.queue.budget import account_id
from gateway.queue.stream import RequestQueue
from gateway.store import keys
from tests.clusters import ClusterDeployment
from tests.harness import model, run_gateway
from wire.redis_url import PoolLimits, client

pytestmark = pytest.mark.integration

KEY = "sk-cluster-0123456789"
MODELS = [f"echo-{i}" for i in range(20)]
PER_MODEL = 3


@pytest.fixture
async def cluster(cluster_deployment: ClusterDeployment) -> RedisCluster:
    redis = client(cluster_deployment.url, PoolLimits(timeout_s=5))
    assert isinstance(redis, RedisCluster)
    await redis.flushdb(target_nodes=RedisCluster.PRIMARIES)
    return redis


async def test_a_gateway_serves_twenty_models_across_the_cluster(
    cluster: RedisCluster, cluster_deployment: ClusterDeployment, cache_dir: Path
) -> None:
    await cluster.initialize()
    owners = {cluster.get_node_from_key(keys.queue(m)).name for m in MODELS}  # type: ignore[union-attr]
    assert len(owners) == len(cluster_deployment.primaries)  # the models' queues are on every primary
    echoes = [model(name, "unused", engine="echo", idle_timeout="1s") for name in MODELS]
    async with (
        run_gateway(echoes, cluster_deployment.url, cache_dir, api_keys=(KEY,), scale_interval_s=0.2) as gw,
        httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {KEY}"}) as http,
    ):

        async def ask(name: str, i: int) -> tuple[int, list[str]]:
            body = {"model": name, "prompt": f"{name} says {i}", "max_tokens": 4, "n": 1 + i % 2}
            response = await http.post(gw.url + "/v1/completions", json=body)
            return response.status_code, [c["text"] for c in response.json().get("choices", [])]

        asked = [(name, i) for name in MODELS for i in range(PER_MODEL)]
        answers = await asyncio.gather(*(ask(name, i) for name, i in asked))
        assert [status for status, _ in answers] == [200] * len(asked)
        for (name, i), (_, texts) in zip(asked, answers, strict=True):
            assert texts == [f"{name} says {i}"] * (1 + i % 2)  # each its own answer, every choice

        queue = RequestQueue(redis=cluster, max_queue_per_model=1)
        loads = await queue.peek(MODELS)
        assert {(m, load.queued, load.in_flight) for m, load in loads.items()} == {(m, 0, 0) for m in MODELS}
        account = account_id(KEY)
        held = [keys.key_held(account), keys.key_usage(account)]
        held += [k for m in MODELS for k in (keys.model_held(m), keys.model_usage(m))]
        assert [k for k in held if await cluster.exists(k)] == []  # every charge released
        await gw.wait_for(lambda: all(gw.backend.replicas(m).desired == 0 for m in MODELS), timeout_s=60)
    await cluster.aclose()
