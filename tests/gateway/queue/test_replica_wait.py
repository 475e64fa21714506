"""``KALTSTART_REDIS_WAIT_REPLICAS``: an enqueue counts only once that many replicas hold it (``WAIT``); one they do
not acknowledge in time is withdrawn and refused with 503 + Retry-After, never both refused and answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from gateway.errors import NotReplicated
from gateway.queue.stream import QueuedRequest, ReplicaWait, RequestQueue
from gateway.store import keys
from tests.deployments import running
from tests.harness import model, run_gateway
from tests.sentinels import SentinelDeployment
from wire import GenerationRequest

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicated() -> AsyncIterator[SentinelDeployment]:
    """A primary and one replica in sync (no Sentinels: nothing here fails over)."""
    async with running(SentinelDeployment(sentinels=0)) as deployment:
        yield deployment


def _queued(request_id: str) -> QueuedRequest:
    return QueuedRequest(request=GenerationRequest(id=request_id, prompt="x"), reply_to="r", accepted_at=0)


async def test_an_enqueue_waits_until_the_replica_holds_it(replicated: SentinelDeployment) -> None:
    primary = Redis.from_url(replicated.node_url(replicated.primary))
    replica = Redis.from_url(replicated.node_url(replicated.replica))
    try:
        queue = RequestQueue(redis=primary, max_queue_per_model=10, replica_wait=ReplicaWait(1, 2000))
        await queue.prepare("m")
        await queue.enqueue("m", _queued("a"))
        assert await replica.xlen(keys.queue("m")) == 1  # accepted means: on the replica too
        with replicated.paused(replicated.replica), pytest.raises(NotReplicated) as refused:
            await queue.enqueue("m", _queued("b"))
        assert len(refused.value.entry_ids) == 1  # written on the primary: the caller withdraws it
    finally:
        await primary.aclose()
        await replica.aclose()


async def test_a_request_no_replica_acknowledged_is_refused_and_withdrawn(
    replicated: SentinelDeployment, tmp_path: Path
) -> None:
    url = replicated.node_url(replicated.primary)
    echo = model("echo", "unused", engine="echo", cold_start_timeout="30s")
    async with (
        run_gateway([echo], url, tmp_path, redis_wait_replicas=1, redis_wait_timeout_s=0.2) as gw,
        httpx.AsyncClient(timeout=20) as client,
    ):
        body = {"model": "echo", "prompt": "hello", "max_tokens": 2}
        with replicated.paused(replicated.replica):
            response = await client.post(gw.url + "/v1/completions", json=body)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "queue_not_replicated"
        redis = Redis.from_url(url)
        try:
            assert await redis.xlen(keys.queue("echo")) == 0  # withdrawn: no replica will ever work on it
            settled = [await redis.get(key) async for key in redis.scan_iter(keys.settled("echo", "*"))]
        finally:
            await redis.aclose()
        assert settled == [b"cancelled"]
        assert gw.backend.replicas("echo").desired == 0  # refused before any replica was asked for
        assert (await client.post(gw.url + "/v1/completions", json=body)).status_code == 200  # replica back: taken
