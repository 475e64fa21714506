"""``ModelPool`` on the event loop with fake engines and runners: the moves it makes, and the ones it must not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from runtime.cancellation import Cancellation
from runtime.engine.interface import BatchEvent, LoadReport
from runtime.errors import ModelBusy, PoolBusy
from runtime.pool.models import ModelPool, PooledModel
from runtime.pool.policy import Budgets
from runtime.scheduling.batches import RunningBatch
from runtime.settings import RuntimeSettings, SchedulerKind
from wire import GenerationRequest, ModelState

pytestmark = pytest.mark.unit

SIZE = 1000


class FakeEngine:
    def __init__(self) -> None:
        self.loaded = self.parked = False
        self.calls: list[str] = []

    @property
    def context_length(self) -> int:
        return 64

    def load(self) -> LoadReport:
        self.loaded = True
        self.calls.append("load")
        return LoadReport(0.0, SIZE, "cpu", "float32")

    def warmup(self) -> None: ...

    def generate(self, requests: Sequence[GenerationRequest], cancellation: Cancellation) -> Iterator[BatchEvent]:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        return SIZE

    def device_memory_bytes(self) -> int:
        return 10 * SIZE

    def park(self) -> int:
        self.parked = True
        self.calls.append("park")
        return SIZE

    def wake(self) -> int:
        self.parked = False
        self.calls.append("wake")
        return SIZE


class FakeRunner:
    """Holds requests while ``held`` is above 0; remembers whether it was closed while it held any."""

    def __init__(self) -> None:
        self.held = 0
        self.closed_busy: bool | None = None

    kind: SchedulerKind = "continuous"
    context_length = 64
    max_batch_tokens = 100
    free_rows = 4

    @property
    def open_requests(self) -> int:
        return self.held

    @property
    def busy(self) -> bool:
        return self.held > 0

    def submit(self, requests: Sequence[GenerationRequest]) -> RunningBatch:
        raise NotImplementedError

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        return ()

    def close(self) -> None:
        self.closed_busy = self.busy


def make_pool(
    tmp_path: Path, states: dict[str, ModelState], *, device: int, host: int, wait_s: float = 30.0
) -> ModelPool:
    models = []
    for name, state in states.items():
        settings = RuntimeSettings(model_name=name, source=str(tmp_path), cache_dir=tmp_path, device="cpu")
        model = PooledModel(name, settings, tmp_path, FakeEngine(), SIZE, 64, state=state)
        if state == "active":
            model.runner = FakeRunner()
        models.append(model)
    return ModelPool(
        models,
        Budgets(device_bytes=device, host_bytes=host),
        wait_s=wait_s,
        runner_factory=lambda _engine, _settings: FakeRunner(),
        engine_factory=lambda _settings, _dir: FakeEngine(),
    )


def runner(pool: ModelPool, name: str) -> FakeRunner:
    found = next(r for r in pool.runners() if pool.state(name) == "active" and r is _model(pool, name).runner)
    assert isinstance(found, FakeRunner)
    return found


def _model(pool: ModelPool, name: str) -> PooledModel:
    return pool._models[name]


async def test_an_absent_model_is_loaded_and_the_idle_one_parked(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "absent"}, device=SIZE, host=2 * SIZE)
    await pool.runner_for("b")
    assert (pool.state("a"), pool.state("b")) == ("parked", "active")
    report = pool.report()
    assert report.models["a"].parks == 1 and report.models["b"].loads == 1
    assert report.device_bytes == SIZE and report.host_bytes == SIZE
    await pool.runner_for("a")
    assert (pool.state("a"), pool.state("b")) == ("active", "parked")
    assert pool.report().models["a"].wakes == 1
    pool.close()


async def test_batches_waiting_for_one_model_share_its_activation(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "absent"}, device=SIZE, host=SIZE)
    first, second = await asyncio.gather(pool.runner_for("b"), pool.runner_for("b"))
    assert first is second
    assert pool.report().models["b"].loads == 1
    pool.close()


async def test_a_model_holding_requests_is_not_evicted_until_it_is_idle(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "absent"}, device=SIZE, host=SIZE)
    busy = runner(pool, "a")
    busy.held = 1
    waiting = asyncio.create_task(pool.runner_for("b"))
    for _ in range(20):  # let the activation plan and start waiting (it would move at once if it did not wait)
        await asyncio.sleep(0)
    assert not waiting.done() and pool.state("a") == "active"
    busy.held = 0
    pool.released()
    await asyncio.wait_for(waiting, timeout=10)
    assert busy.closed_busy is False, "the runner of a model was closed while it held requests"
    assert (pool.state("a"), pool.state("b")) == ("parked", "active")
    pool.close()


async def test_a_batch_that_finds_no_room_within_the_wait_is_refused(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "absent"}, device=SIZE, host=SIZE, wait_s=0.2)
    runner(pool, "a").held = 2
    with pytest.raises(PoolBusy, match="a hold requests"):
        await pool.runner_for("b")
    assert (pool.state("a"), pool.state("b")) == ("active", "absent")
    assert runner(pool, "a").closed_busy is None
    pool.close()


async def test_budgets_hold_at_every_step(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "absent", "c": "absent"}, device=SIZE, host=SIZE)
    for name in ("b", "c", "a", "c", "b", "a"):
        await pool.runner_for(name)
        report = pool.report()
        assert report.device_bytes <= report.device_budget_bytes
        assert report.host_bytes <= report.host_budget_bytes
        assert pool.state(name) == "active"
    pool.close()


async def test_a_model_is_set_aside_on_request_only_while_idle_and_asking_again_is_harmless(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "active"}, device=2 * SIZE, host=SIZE)
    busy = runner(pool, "a")
    busy.held = 1
    with pytest.raises(ModelBusy, match="a holds requests"):
        await pool.set_aside("a", "parked")
    with pytest.raises(ModelBusy):
        await pool.set_aside("a", "absent")
    assert pool.state("a") == "active" and busy.closed_busy is None, "a busy model was moved"
    busy.held = 0
    assert await pool.set_aside("a", "parked") == "parked"
    assert busy.closed_busy is False
    assert await pool.set_aside("a", "parked") == "parked"  # again: nothing moves
    assert pool.report().models["a"].parks == 1
    # The host holds one: parking b drops a, the least recently used (both unused: a comes first), to disk.
    assert await pool.set_aside("b", "parked") == "parked"
    assert (pool.state("a"), pool.report().models["a"].unloads) == ("absent", 1)
    assert await pool.set_aside("b", "absent") == "absent"
    assert await pool.set_aside("b", "parked") == "absent"  # never back towards the device
    assert await pool.set_aside("b", "absent") == "absent"
    assert pool.report().models["b"].unloads == 1
    pool.close()


async def test_no_model_is_set_aside_while_the_pool_makes_room_for_another(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, {"a": "active", "b": "active", "c": "absent"}, device=2 * SIZE, host=SIZE)
    runner(pool, "a").held = 1
    runner(pool, "b").held = 1
    waiting = asyncio.create_task(pool.runner_for("c"))  # holds the pool's lock while it waits for room
    for _ in range(20):
        await asyncio.sleep(0)
    runner(pool, "b").held = 0
    with pytest.raises(ModelBusy, match="moving models"):
        await pool.set_aside("b", "absent")
    pool.released()
    await asyncio.wait_for(waiting, timeout=10)
    assert pool.state("c") == "active"
    pool.close()
