"""Redis Cluster failover under load, with real processes: three Valkey primaries and a replica each
(``tests.clusters``), a gateway on ``redis+cluster://`` serving twenty echo models whose queues are on every primary,
clients with an API key (its account in yet another slot), and runtimes announcing on the cluster.

Eight clients send requests round the models without pause; one primary is killed with SIGKILL, its replica is
elected in its place by the cluster itself (no ``CLUSTER FAILOVER``: a ``cluster-node-timeout`` of 1 s), and the
load goes on until a hundred more requests have been enqueued. While no primary serves the killed node's slots the
cluster refuses every command (``cluster-require-full-coverage yes``, Redis's default), so the gateway answers
503 + Retry-After at the door (the clients here pause 0.1 s after one, and ask again).

- ``KALTSTART_REDIS_WAIT_REPLICAS=1``: every accepted request is answered exactly once, with its own text; nothing
  stays pending on any model; every model goes back to zero.
- ``0``: the same, but a loss is measured, not asserted: what the primary had acknowledged and not yet sent to its
  replica when it died.

The figures (time with no primary, accepted, answered, lost, refused, duplicates) are printed and recorded as
properties of the test (``--junitxml``), for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.queue.stream import BODY_GRACE_S, RequestQueue
from gateway.store import keys
from tests.clusters import ClusterDeployment
from tests.deployments import running
from tests.faults.test_failover import Enqueues
from tests.harness import model, run_gateway
from wire.redis_url import PoolLimits, client

pytestmark = pytest.mark.faults

KEY = "sk-cluster-0123456789"
MODELS = [f"echo-{i}" for i in range(20)]
CLIENTS = 8
#: Enqueues before the kill, and after the failover, under load.
BEFORE = AFTER = 100
#: Longest a request's body and charges are held without a settle (the default request timeout plus the grace).
HOLD_S = 600.0 + BODY_GRACE_S
#: A client's pause after a refusal (a client honouring Retry-After would wait longer).
REFUSED_PAUSE_S = 0.1


@pytest.fixture
async def deployment() -> AsyncIterator[ClusterDeployment]:
    async with running(ClusterDeployment()) as cluster:
        yield cluster


@dataclass
class Outcome:
    status: int
    id: str = ""
    right: bool = False
    code: str = ""


@pytest.mark.parametrize("wait_replicas", [1, 0])
async def test_a_primary_killed_under_load(
    deployment: ClusterDeployment, cache_dir: Path, wait_replicas: int, record_property: Callable[[str, object], None]
) -> None:
    echoes = [model(name, "unused", engine="echo", idle_timeout="2s") for name in MODELS]
    settings: dict[str, Any] = {
        "api_keys": (KEY,), "scale_interval_s": 0.2, "heartbeat_interval_s": 0.5,
        "redis_wait_replicas": wait_replicas, "redis_wait_timeout_s": 0.5, "request_timeout_s": 60.0,
    }  # fmt: skip
    victim, heir = deployment.primaries[0], deployment.replicas[0]
    async with (
        run_gateway(echoes, deployment.url, cache_dir, **settings) as gw,
        httpx.AsyncClient(timeout=90, headers={"authorization": f"Bearer {KEY}"}) as http,
    ):
        url = gw.url + "/v1/completions"

        async def ask(name: str, prompt: str) -> Outcome:
            body = {"model": name, "prompt": prompt, "max_tokens": 8}
            response = await http.post(url, json=body)
            answer = response.json()
            if response.status_code != 200:
                return Outcome(response.status_code, code=answer["error"].get("code") or "")
            return Outcome(200, answer["id"], answer["choices"][0]["text"] == prompt)

        assert [o.status for o in await asyncio.gather(*(ask(m, "warm") for m in MODELS))] == [200] * len(MODELS)
        enqueues = Enqueues()
        enqueues.watch(gw.app.state.gateway._queue)
        outcomes: list[Outcome] = []
        stopping = asyncio.Event()

        async def load(worker: int) -> None:
            sent = 0
            while not stopping.is_set():
                outcome = await ask(MODELS[(worker + sent) % len(MODELS)], f"client {worker} asks {sent}")
                outcomes.append(outcome)
                sent += 1
                if outcome.status != 200:
                    await asyncio.sleep(REFUSED_PAUSE_S)  # a client pacing itself, not a wait for an event

        clients = [asyncio.create_task(load(w)) for w in range(CLIENTS)]
        await enqueues.until(BEFORE, 60)
        killed_at = time.monotonic()
        deployment.kill(victim)  # kill -9
        await asyncio.wait_for(deployment.promoted(heir), 60)
        no_primary_s = time.monotonic() - killed_at
        await enqueues.until(enqueues.ended + AFTER, 120)
        stopping.set()
        await asyncio.gather(*clients)

        await _check(
            deployment,
            enqueues,
            outcomes,
            wait_replicas=wait_replicas,
            no_primary_s=no_primary_s,
            record=record_property,
        )
        await gw.wait_for(lambda: all(gw.backend.replicas(m).desired == 0 for m in MODELS), timeout_s=60)


async def _check(
    deployment: ClusterDeployment,
    enqueues: Enqueues,
    outcomes: list[Outcome],
    *,
    wait_replicas: int,
    no_primary_s: float,
    record: Callable[[str, object], None],
) -> None:
    """The figures, printed and recorded first, then the promise's checks, on what the clients heard and what the
    cluster holds."""
    answered = [o for o in outcomes if o.status == 200]
    per_id = Counter(o.id for o in answered)
    duplicates = sum(n - 1 for n in per_id.values())
    lost = enqueues.accepted - set(per_id)
    figures: dict[str, Any] = {
        "wait_replicas": wait_replicas,
        "accepted": len(enqueues.accepted),
        "answered": len(answered),
        "lost": len(lost),
        "not_answered": dict(Counter(o.code for o in outcomes if o.status != 200)),
        "duplicates": duplicates,
        "no_primary_s": round(no_primary_s, 2),
    }
    print(f"\ncluster failover figures: {json.dumps(figures)}")
    for name, value in figures.items():
        record(name, value)
    assert duplicates == 0, figures
    assert all(o.right for o in answered)  # each answer is its own request's
    if wait_replicas:
        assert not lost, f"accepted but never answered: {sorted(lost)}"
        assert set(per_id) == enqueues.accepted
    redis = client(deployment.url, PoolLimits(timeout_s=5))
    assert isinstance(redis, RedisCluster)
    try:
        loads = await RequestQueue(redis=redis, max_queue_per_model=1).peek(MODELS)
        assert {m for m, load in loads.items() if load.demand} == set()  # nothing queued or in flight
        # A charge left behind lapses at its request's deadline (``RequestQueue``'s hold: the request timeout plus
        # the body's grace), as one a dead gateway leaves does. In about 1 run of 10 here one is left after the
        # failover, with its body, though its request was answered (docs/reliability.md, known limits): counted.
        now_ms = time.time() * 1000
        held = [await redis.zrange(keys.model_held(m), 0, -1, withscores=True) for m in MODELS]
        scores = [score for charges in cast(list[list[tuple[bytes, float]]], held) for _member, score in charges]
        record("charges_left", len(scores))
        print(f"charges left to lapse: {len(scores)}")
        assert all(score <= now_ms + HOLD_S * 1000 for score in scores), "a charge that never lapses"
    finally:
        await redis.aclose()
