"""A real pool runtime (``python -m runtime --pool``) of three demo-sized models under a device budget that fits one
and a host budget that fits two: every model answers, as a model that never parked answers; ``/readyz`` shows
each one active, parked or absent as batches come; the budgets hold; a model with a request in flight stays, also
when the gateway asks to park or unload it (``POST /v1/pool/park``, ``/v1/pool/unload``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.settings import RuntimeSettings
from runtime.weights.demo_model import build
from tests.runtime.support import RuntimeProcess, StreamedBatch, alone, finishes, greedy
from wire import (
    BATCH_PATH,
    POOL_PARK_PATH,
    POOL_UNLOAD_PATH,
    READY_PATH,
    BatchEventAdapter,
    FinishEvent,
    ModelState,
    PoolMoveResponse,
    PoolReport,
    ReadyBody,
    Residency,
)

pytestmark = pytest.mark.integration

#: The demo model's float32 weights are 3.4 MB: the device holds one of them, the host two.
DEVICE_BYTES = 4_000_000
HOST_BYTES = 8_000_000
PROMPT = "the gateway keeps every request in a queue"


@pytest.fixture(scope="module")
def model_dirs(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool-models")
    return {"a": demo_model_dir, "b": build(root / "b", seed=7), "c": build(root / "c", seed=99)}


@pytest.fixture(scope="module")
def pool_runtime(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    models = [flag for name, path in model_dirs.items() for flag in ("--model", f"{name}={path}")]
    budgets = ["--pool-device-bytes", str(DEVICE_BYTES), "--pool-host-bytes", str(HOST_BYTES)]
    cache = ["--cache-dir", str(tmp_path_factory.mktemp("pool-cache")), "--device", "cpu"]
    process = RuntimeProcess("--pool", *models, *budgets, *cache)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def never_parked(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, FinishEvent]:
    """Each model's answer from an engine loaded once and never parked."""
    from runtime.torch_engine.engine import TorchEngine

    answers = {}
    for name, path in model_dirs.items():
        settings = RuntimeSettings(model_name=name, source=str(path), cache_dir=tmp_path_factory.mktemp(name))
        engine = TorchEngine(path, settings)
        engine.load()
        answers[name] = alone(engine, greedy(f"{name}-1", prompt=PROMPT, max_tokens=16))
    return answers


def pool_report(runtime: RuntimeProcess) -> PoolReport:
    body = ReadyBody.model_validate_json(httpx.get(runtime.url + READY_PATH, timeout=10).content)
    assert body.pool is not None
    assert body.pool.device_bytes <= body.pool.device_budget_bytes
    assert body.pool.host_bytes <= body.pool.host_budget_bytes
    return body.pool


def states(runtime: RuntimeProcess) -> dict[str, ModelState]:
    return {name: model.state for name, model in pool_report(runtime).models.items()}


def ask(runtime: RuntimeProcess, model: str) -> FinishEvent:
    body = {"model": model, "requests": [greedy(f"{model}-1", prompt=PROMPT, max_tokens=16).model_dump()]}
    response = httpx.post(runtime.url + BATCH_PATH, json=body, timeout=60)
    assert response.status_code == 200, response.text
    residency = Residency.from_headers(response.headers)  # what the gateway routes by, after this batch
    assert residency is not None and residency == Residency.of(pool_report(runtime))
    assert residency.state(model) == "active"
    events = [BatchEventAdapter.validate_json(line) for line in response.text.splitlines() if line]
    return finishes(events)[f"{model}-1"]


def test_every_model_answers_as_one_that_never_parked_while_they_take_turns(
    pool_runtime: RuntimeProcess, never_parked: dict[str, FinishEvent]
) -> None:
    assert states(pool_runtime) == {"a": "active", "b": "absent", "c": "absent"}
    assert ask(pool_runtime, "b").text == never_parked["b"].text
    assert states(pool_runtime) == {"a": "parked", "b": "active", "c": "absent"}
    assert ask(pool_runtime, "c").text == never_parked["c"].text
    assert states(pool_runtime) == {"a": "parked", "b": "parked", "c": "active"}
    # Waking a: c leaves the device, and the host, holding a until it is woken, keeps the later used of b and c.
    assert ask(pool_runtime, "a").text == never_parked["a"].text
    assert states(pool_runtime) == {"a": "active", "b": "absent", "c": "parked"}
    report = pool_report(pool_runtime)
    assert (report.models["a"].parks, report.models["a"].wakes) == (1, 1)
    assert (report.models["b"].loads, report.models["b"].unloads) == (1, 1)
    assert report.models["a"].park_s > 0 and report.models["a"].wake_s > 0 and report.models["b"].load_s > 0
    assert report.models["c"].wake_s == 0  # never woken
    assert ask(pool_runtime, "c").text == never_parked["c"].text  # woken
    assert ask(pool_runtime, "b").text == never_parked["b"].text  # loaded again


def test_a_model_with_a_request_in_flight_is_not_evicted(pool_runtime: RuntimeProcess) -> None:
    """A long request for b runs while c is asked for: c waits until b's request is done, then takes the device."""
    assert states(pool_runtime)["b"] == "active"
    start = len(pool_runtime.lines)
    long = greedy("long", prompt="hello", max_tokens=400, stream=True)
    running = StreamedBatch(pool_runtime.url, {"model": "b", "requests": [long.model_dump()]})
    running.wait_for(lambda s: s.received() > 0)
    waiting = StreamedBatch(pool_runtime.url, {"model": "c", "requests": [greedy("short", prompt=PROMPT).model_dump()]})
    done = finishes(running.wait_done())
    assert done["long"].usage.completion_tokens == 400, running.events[-3:]
    assert "short" in finishes(waiting.wait_done())
    log = pool_runtime.lines[start:]
    finished_b = next(i for i, line in enumerate(log) if "400 completion tokens" in line)
    b_left = next(i for i, line in enumerate(log) if "pool: parked b" in line or "pool: dropped b (active" in line)
    assert finished_b < b_left, "b left the device while its request ran"
    assert states(pool_runtime)["c"] == "active"


def set_aside(runtime: RuntimeProcess, path: str, model: str) -> ModelState:
    """``POST`` a park or unload; the state it answers, checked against ``/readyz`` and the residency headers."""
    response = httpx.post(runtime.url + path, json={"model": model}, timeout=30)
    assert response.status_code == 200, response.text
    state = PoolMoveResponse.model_validate_json(response.content).state
    assert Residency.from_headers(response.headers) == Residency.of(pool_report(runtime))
    assert states(runtime)[model] == state
    return state


def test_the_gateway_parks_and_unloads_an_idle_model_never_a_busy_one(pool_runtime: RuntimeProcess) -> None:
    ask(pool_runtime, "b")
    long = greedy("long-2", prompt="hello", max_tokens=400, stream=True)
    running = StreamedBatch(pool_runtime.url, {"model": "b", "requests": [long.model_dump()]})
    running.wait_for(lambda s: s.received() > 0)
    for path in (POOL_PARK_PATH, POOL_UNLOAD_PATH):
        refused = httpx.post(pool_runtime.url + path, json={"model": "b"}, timeout=30)
        assert refused.status_code == 409, (path, refused.text)
    assert states(pool_runtime)["b"] == "active"
    assert finishes(running.wait_done())["long-2"].usage.completion_tokens == 400, running.events[-3:]

    before = pool_report(pool_runtime).models["b"]
    assert set_aside(pool_runtime, POOL_PARK_PATH, "b") == "parked"
    assert set_aside(pool_runtime, POOL_PARK_PATH, "b") == "parked"  # again: nothing moves
    assert set_aside(pool_runtime, POOL_UNLOAD_PATH, "b") == "absent"
    assert set_aside(pool_runtime, POOL_UNLOAD_PATH, "b") == "absent"
    assert set_aside(pool_runtime, POOL_PARK_PATH, "b") == "absent"  # never back towards the device
    after = pool_report(pool_runtime).models["b"]
    assert (after.parks - before.parks, after.unloads - before.unloads) == (1, 1)
    unknown = httpx.post(pool_runtime.url + POOL_PARK_PATH, json={"model": "nope"}, timeout=30)
    assert unknown.status_code == 404
    assert ask(pool_runtime, "b").usage.completion_tokens > 0  # loaded again on its next batch
