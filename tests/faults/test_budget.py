"""One API key flooding a model with ``n`` x 1 MiB requests: refused with 429 once its quota is held, while Redis
stays far from its ``maxmemory`` and the other models keep serving; per-key quotas from the key file; nothing left
in Redis once the flood's clients leave. Real gateway, real runtime processes, a Valkey of its own with the bundled
Redis's ``noeviction`` policy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from gateway.store.embedded import EmbeddedRedis
from tests.harness import model, run_gateway
from tests.integration.conftest import assert_openai_error

pytestmark = [pytest.mark.faults, pytest.mark.security]

MIB = 1 << 20
FLOOD_KEY = "sk-flood-0123456789"
CALM_KEY = "sk-calm-0123456789"
#: A 0.95 MiB prompt, 8 choices each: under the request limits, 7.6 MiB a request when each choice carried it.
PROMPT = "flood " * int(0.95 * MIB / 6)
FLOODS = 48


@pytest.fixture
async def small_redis() -> AsyncIterator[str]:
    """Its own Valkey with a 192 MiB ``maxmemory`` and ``noeviction``: what fills it fails every write."""
    with EmbeddedRedis() as url:
        redis = Redis.from_url(url)
        await redis.config_set("maxmemory", str(192 * MIB))
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.aclose()
        yield url


def _post(client: httpx.AsyncClient, url: str, key: str, **body: object) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(
        client.post(url + "/v1/completions", json={"max_tokens": 2} | body, headers={"authorization": f"Bearer {key}"})
    )


async def _steady(client: httpx.AsyncClient, url: str, done: asyncio.Event) -> list[httpx.Response]:
    """Requests to the other model, one after the other, until ``done``."""
    answers: list[httpx.Response] = []
    while not done.is_set():
        answers.append(await _post(client, url, CALM_KEY, model="other", prompt=f"still here {len(answers)}"))
    return answers


async def _left_behind(redis: Redis) -> list[str]:
    """Keys holding a request's body or a charge."""
    names = [key.decode() async for key in redis.scan_iter(match="kaltstart:*")]
    return sorted(n for n in names if ":body:" in n or n.endswith((":held", ":usage")))


async def test_a_flood_from_one_key_gets_429_while_other_models_serve(
    small_redis: str, cache_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{FLOOD_KEY}\n{CALM_KEY}\n")
    # The flooded model never becomes ready (its requests wait through a long cold start, held in Redis).
    flooded = model("flooded", "/nonexistent/model", cold_start_timeout="120s")
    other = model("other", "unused", engine="echo")
    redis = Redis.from_url(small_redis)
    async with (
        run_gateway([flooded, other], small_redis, cache_dir, api_keys_file=keys) as gw,
        httpx.AsyncClient(timeout=60) as client,
    ):
        assert (await _post(client, gw.url, CALM_KEY, model="other", prompt="warm")).status_code == 200
        flooding = asyncio.Event()
        steady = asyncio.create_task(_steady(client, gw.url, flooding))  # the other model's client, meanwhile
        flood = [_post(client, gw.url, FLOOD_KEY, model="flooded", prompt=PROMPT, n=8) for _ in range(FLOODS)]
        peak = 0
        async with asyncio.timeout(60):  # until each flood request is refused or queued
            while True:
                used = int((await redis.info("memory"))["used_memory"])
                peak = max(peak, used)
                refused = [t.result() for t in flood if t.done()]
                queued = await redis.xlen("kaltstart:{m:flooded}:queue")
                if len(refused) + queued // 8 >= FLOODS:
                    break
                await asyncio.sleep(0.05)

        statuses = [r.status_code for r in refused]
        flooding.set()
        others = await steady
        others += [await _post(client, gw.url, CALM_KEY, model="other", prompt=f"still here {i}") for i in range(3)]
        peak = max(peak, int((await redis.info("memory"))["used_memory"]))
        print(  # the before -> after figures of the closing note
            f"\nflood: {len(refused)} answered ({sorted(set(statuses))}), {queued // 8} queued; "
            f"Redis used_memory peak {peak / MIB:.0f} MiB; other model: {[r.status_code for r in others]}"
        )
        assert len(others) > 3 and {r.status_code for r in others} == {200}
        assert statuses and set(statuses) == {429}
        for response in refused:
            assert assert_openai_error(response, 429, "rate_limit_error")["code"] == "key_quota_exceeded"
            assert int(response.headers["retry-after"]) >= 1
        assert peak < 96 * MIB  # half of maxmemory: the key's 32 MiB and the model's 64 MiB, not 48 x 7.6 MiB

        for task in flood:  # the flood's clients give up
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        async with asyncio.timeout(30):
            while await _left_behind(redis):  # noqa: ASYNC110 - the cancellations show only in Redis
                await asyncio.sleep(0.05)
    await redis.aclose()


async def test_key_file_quotas_and_metrics_per_key(redis_url: str, cache_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{FLOOD_KEY} name=small max-requests=2\n{CALM_KEY} other,waiting max-entries=3\n")
    waiting = model("waiting", "/nonexistent/model", cold_start_timeout="120s")
    other = model("other", "unused", engine="echo")
    async with (
        run_gateway([waiting, other], redis_url, cache_dir, api_keys_file=keys) as gw,
        httpx.AsyncClient(timeout=60) as client,
    ):
        held = [_post(client, gw.url, FLOOD_KEY, model="waiting", prompt="hold") for _ in range(2)]
        redis = Redis.from_url(redis_url)
        async with asyncio.timeout(30):
            while await redis.xlen("kaltstart:{m:waiting}:queue") < 2:  # noqa: ASYNC110 - shows only in Redis
                await asyncio.sleep(0.02)
        third = await _post(client, gw.url, FLOOD_KEY, model="other", prompt="one more")  # another model: same key
        assert assert_openai_error(third, 429, "rate_limit_error")["code"] == "key_quota_exceeded"
        assert int(third.headers["retry-after"]) >= 1
        assert (await _post(client, gw.url, CALM_KEY, model="other", prompt="calm")).status_code == 200  # own quota

        held.append(_post(client, gw.url, CALM_KEY, model="waiting", prompt="three", n=3))
        async with asyncio.timeout(30):
            while await redis.xlen("kaltstart:{m:waiting}:queue") < 5:  # noqa: ASYNC110 - shows only in Redis
                await asyncio.sleep(0.02)
        too_many = await _post(client, gw.url, CALM_KEY, model="other", prompt="one more")  # 3 + 1 entries > 3
        assert assert_openai_error(too_many, 429, "rate_limit_error")["code"] == "key_quota_exceeded"

        wide = await _post(client, gw.url, CALM_KEY, model="other", prompt="x" * 700_000, n=16)
        assert assert_openai_error(wide, 413, "invalid_request_error")["param"] == "n"

        assert gw.metric("kaltstart_key_refusals_total", key="small", quota="requests") == 1
        calm_label = next(
            s.labels["key"]
            for m in gw.metrics.registry.collect()
            for s in m.samples
            if s.name == "kaltstart_key_requests_total" and s.labels["key"] != "small"
        )
        assert calm_label.startswith("key-") and CALM_KEY not in calm_label
        assert gw.metric("kaltstart_key_refusals_total", key=calm_label, quota="entries") == 1
        metrics = (await client.get(gw.url + "/metrics")).text
        assert FLOOD_KEY not in metrics and CALM_KEY not in metrics

        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        async with asyncio.timeout(30):
            while await _left_behind(redis):  # noqa: ASYNC110 - the cancellations show only in Redis
                await asyncio.sleep(0.05)
        await redis.aclose()
