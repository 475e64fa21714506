"""A local pool of three demo-sized models behind a real gateway (``[pools.<name>]``): one pool runtime process
under a device budget that fits one model answers for all three through the official OpenAI client, each answer
as the model's own never-parked engine gives it; the models take turns on the device (loaded, parked, woken); the
gateway learns where each is from the batch answers; and the pool, one scaling unit, goes back to zero once all
its models are idle. With a short ``park-after`` and ``idle-timeout`` an idle model is parked, then unloaded, on the
gateway's word, and the pool then goes to zero."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

import wire
from gateway.backends.local.config import LocalPool
from gateway.replicas.poolreports import PoolReports
from runtime.settings import RuntimeSettings
from runtime.weights.demo_model import build
from tests.harness import LocalGateway, eventually, model, replica_processes, run_gateway
from tests.runtime.support import alone, greedy

pytestmark = pytest.mark.integration

#: The demo model's float32 weights are 3.4 MB: the device holds one of them, the host two.
POOL = LocalPool("three", ("a", "b", "c"), device="cpu", device_bytes=4_000_000, host_bytes=8_000_000)
PROMPT = "the gateway keeps every request in a queue"
IDLE_TIMEOUT_S = 2.0
#: b's and c's idle-timeout: long enough that neither is unloaded between the test's requests.
LATER_TIMEOUT_S = 6.0


@pytest.fixture(scope="module")
def model_dirs(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool-models")
    return {"a": demo_model_dir, "b": build(root / "b", seed=7), "c": build(root / "c", seed=99)}


@pytest.fixture(scope="module")
def served_alone(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each model's greedy answer from an engine of its own, loaded once and never parked."""
    from runtime.torch_engine.engine import TorchEngine

    answers = {}
    for name, path in model_dirs.items():
        settings = RuntimeSettings(model_name=name, source=str(path), cache_dir=tmp_path_factory.mktemp(name))
        engine = TorchEngine(path, settings)
        engine.load()
        answers[name] = alone(engine, greedy(name, prompt=PROMPT, max_tokens=16)).text
    return answers


async def complete(sdk: openai.AsyncOpenAI, name: str) -> str:
    answer = await sdk.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
    return answer.choices[0].text


async def pool_report(gw: LocalGateway) -> wire.PoolReport:
    (replica,) = replica_processes(gw, "a")
    assert replica.url is not None
    async with httpx.AsyncClient(timeout=10) as client:
        body = wire.ReadyBody.model_validate_json((await client.get(replica.url + wire.READY_PATH)).content)
    assert body.pool is not None
    assert body.pool.device_bytes <= body.pool.device_budget_bytes
    assert body.pool.host_bytes <= body.pool.host_budget_bytes
    return body.pool


async def test_a_pool_answers_for_all_its_models_as_each_served_alone_and_goes_back_to_zero(
    redis_url: str, cache_dir: Path, model_dirs: dict[str, Path], served_alone: dict[str, str]
) -> None:
    models = [  # the pool goes once each model was idle for its own idle-timeout
        model("a", model_dirs["a"], idle_timeout=f"{IDLE_TIMEOUT_S}s"),
        model("b", model_dirs["b"], idle_timeout=f"{LATER_TIMEOUT_S}s"),
        model("c", model_dirs["c"], idle_timeout=f"{LATER_TIMEOUT_S}s"),
    ]
    async with run_gateway(models, redis_url, cache_dir, pools=(POOL,), scale_interval_s=0.2) as gw:
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for name in ("a", "b", "c", "a"):  # each pushes the last out; a comes back from host memory
            assert await complete(sdk, name) == served_alone[name], name
            (replica,) = replica_processes(gw, name)  # one process serves them all
            assert replica.url is not None
            assert gw.endpoints.residency.preference(replica.url, name) == (2, 0)  # learned from the batch answer
        report = await pool_report(gw)
        assert report.models["a"].state == "active" and report.models["a"].wakes == 1
        # The host holds two: waking a (counted there until it is on the device) dropped b, the least recently used.
        assert {m: report.models[m].state for m in "bc"} == {"b": "absent", "c": "parked"}

        both = await asyncio.gather(*(complete(sdk, name) for name in ("c", "b", "a")))  # they take turns
        assert both == [served_alone[name] for name in ("c", "b", "a")]

        assert gw.backend.replicas("c").desired == 1  # the pool's count, for each of its models
        answered = time.monotonic()
        await gw.wait_for(lambda: gw.backend.replicas("a").desired == 0, timeout_s=30 + LATER_TIMEOUT_S)
        assert time.monotonic() - answered >= LATER_TIMEOUT_S - 0.5, "gone before b and c were idle for theirs"
        assert all(gw.endpoints.get(name) == () for name in "abc")


async def test_the_gateway_s_metrics_follow_the_pool_s_models_as_they_take_turns(
    redis_url: str, cache_dir: Path, model_dirs: dict[str, Path]
) -> None:
    """Two models, a device budget for one: after a, b, a the gauges say a is active and b parked, and the moves
    the replica made (each with its seconds) are counted; one more request for b wakes it and the counts go up."""
    pool = LocalPool("two", ("a", "b"), device="cpu", device_bytes=4_000_000, host_bytes=8_000_000)
    async with run_gateway([model("a", model_dirs["a"]), model("b", model_dirs["b"])], redis_url, cache_dir,
                           pools=(pool,)) as gw:  # fmt: skip
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reports: PoolReports = gw.app.state.pool_reports
        for name in ("a", "b", "a"):
            await complete(sdk, name)
        await reports.drain()  # the reads the batch answers' news set off
        (replica,) = replica_processes(gw, "a")
        url = replica.url
        assert url is not None

        def moves(model: str, move: str, metric: str = "kaltstart_pool_moves_total") -> float:
            return gw.metric(metric, model=model, replica=url, move=move)

        state = {
            (m, s): gw.metric("kaltstart_model_state", model=m, state=s) for m in "ab" for s in ("active", "parked")
        }
        assert state == {("a", "active"): 1, ("a", "parked"): 0, ("b", "active"): 0, ("b", "parked"): 1}
        assert (moves("a", "park"), moves("a", "wake"), moves("b", "load"), moves("b", "park")) == (1, 1, 1, 1)
        assert moves("a", "wake", "kaltstart_pool_move_seconds_total") > 0
        assert gw.metric("kaltstart_pool_bytes", replica=url, memory="device") <= 4_000_000
        assert gw.metric("kaltstart_pool_budget_bytes", replica=url, memory="host") == 8_000_000

        await complete(sdk, "b")
        await reports.drain()
        assert (moves("b", "wake"), moves("a", "park")) == (1, 2)
        assert gw.metric("kaltstart_model_state", model="b", state="active") == 1


def states_now(url: str) -> dict[str, wire.ModelState]:
    """The pool's models' states from its ``/readyz`` (none once the replica is gone)."""
    try:
        body = wire.ReadyBody.model_validate_json(httpx.get(url + wire.READY_PATH, timeout=5).content)
    except (httpx.HTTPError, ValueError):
        return {}
    return {} if body.pool is None else {name: m.state for name, m in body.pool.models.items()}


async def test_an_idle_pool_model_is_parked_then_unloaded_and_then_the_pool_goes_to_zero(
    redis_url: str, cache_dir: Path, model_dirs: dict[str, Path], served_alone: dict[str, str]
) -> None:
    models = [
        model("b", model_dirs["b"], idle_timeout="10s", park_after="1s"),  # never used: it holds the pool 10 s
        model("a", model_dirs["a"], idle_timeout="3s", park_after="1s"),
    ]
    pool = LocalPool("two", ("a", "b"), device="cpu")  # the default budgets hold both; a is loaded at the start
    async with run_gateway(models, redis_url, cache_dir, pools=(pool,), scale_interval_s=0.2) as gw:
        sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert await complete(sdk, "a") == served_alone["a"]
        answered = time.monotonic()
        (replica,) = replica_processes(gw, "a")
        url = replica.url
        assert url is not None
        assert states_now(url) == {"a": "active", "b": "absent"}

        await eventually(lambda: states_now(url).get("a") == "parked", timeout_s=20)
        assert time.monotonic() - answered >= 0.8, "parked before park-after"
        await eventually(lambda: states_now(url).get("a") == "absent", timeout_s=20)
        assert time.monotonic() - answered >= 2.8, "unloaded before idle-timeout"
        assert states_now(url)["b"] == "absent"
        await gw.wait_for(lambda: gw.backend.replicas("a").desired == 0, timeout_s=30)
        assert all(gw.endpoints.get(name) == () for name in "ab")
