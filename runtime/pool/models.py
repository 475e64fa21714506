"""The models of a pool runtime and the moves between their states, on the event loop and one pool thread.

``ModelPool.runner_for(name)`` is how a batch gets to its model: an active model's runner at once; otherwise one
*activation* per model (shared by every batch waiting for it) takes the pool's lock, asks ``policy.make_room`` which
models must leave, waits (up to ``PoolSettings.wait_s``, then ``PoolBusy``: 503) while busy models are in the way,
and carries the moves out, then wakes (parked) or loads (absent) the model. Each model that leaves the device has its
runner closed first (its generation thread ends after its current step), so no step ever runs on parked weights.

Every decision and every state change happens on the event loop; only the copies and loads run on the pool thread.
A model is *busy* while its runner holds a batch or a batch is waiting for it to become active, and the policy never
moves a busy model; a model on its way between states is ``moving`` and takes no batch until it is active again.
Each model that becomes active gets a fresh runner (its own generation thread), so active models decode side by
side, each with continuous batching over its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from runtime.engine.factory import create_engine
from runtime.engine.interface import Engine, ParkingEngine
from runtime.errors import ModelBusy, ModelTooLarge, PoolBusy
from runtime.pool.policy import Budgets, Move, Slot, make_room, park
from runtime.scheduling.batches import Runner
from runtime.settings import PoolSettings, RuntimeSettings
from runtime.weights.cache import materialise
from wire import ModelState, PoolModel, PoolReport

__all__ = ["EngineFactory", "ModelPool", "PooledModel", "RunnerFactory", "default_budgets"]

log = logging.getLogger(__name__)

#: Makes a model's runner (scheduler) once it is active; called on the pool thread.
RunnerFactory = Callable[[Engine, RuntimeSettings], Runner]
#: Makes a model's engine, not loaded yet, from its settings and cached directory.
EngineFactory = Callable[[RuntimeSettings, Path], ParkingEngine]
_FALLBACK_CONTEXT = 2048
_MOVE_SECONDS = ("load_s", "wake_s", "park_s", "unload_s")
#: How far from the device each state is: a move asked for goes only further away.
_DEPTH: dict[ModelState, int] = {"active": 0, "parked": 1, "absent": 2}


def _torch_engine(settings: RuntimeSettings, model_dir: Path) -> ParkingEngine:
    return cast("ParkingEngine", create_engine(settings, model_dir))


@dataclass(eq=False)
class PooledModel:
    name: str
    settings: RuntimeSettings
    model_dir: Path
    engine: ParkingEngine
    weight_bytes: int
    context_length: int
    state: ModelState = "absent"
    runner: Runner | None = None
    moving: bool = False
    waiting: int = 0  # batches waiting in runner_for until it is active
    last_used: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("loads", "wakes", "parks", "unloads"), 0))
    #: Seconds the moves took, summed per kind (``load_s``, ...), as ``PoolModel`` reports them.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_MOVE_SECONDS, 0.0))

    @property
    def ready(self) -> bool:
        return self.state == "active" and not self.moving and self.runner is not None

    def slot(self) -> Slot:
        busy = self.waiting > 0 or self.moving or (self.runner is not None and self.runner.busy)
        return Slot(self.name, self.state, self.weight_bytes, self.last_used, busy)

    def report(self) -> PoolModel:
        held = self.runner.open_requests if self.runner is not None else 0
        return PoolModel(
            state=self.state, weight_bytes=self.weight_bytes, open_requests=held, **self.counts, **self.seconds
        )

    def moved(self, kind: str, seconds: float) -> None:
        """One move of ``kind`` (``load``, ``wake``, ``park``, ``unload``) done in ``seconds``."""
        self.counts[kind + "s"] += 1
        self.seconds[kind + "_s"] += seconds


class ModelPool:
    """Several models in one runtime, at most ``budgets`` of weight bytes active and parked. Use from the event loop
    (``open`` and the moves run off it)."""

    def __init__(
        self,
        models: Sequence[PooledModel],
        budgets: Budgets,
        *,
        wait_s: float,
        runner_factory: RunnerFactory,
        engine_factory: EngineFactory = _torch_engine,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = {model.name: model for model in models}
        self.budgets = budgets
        self._wait_s = wait_s
        self._runner_factory = runner_factory
        self._engine_factory = engine_factory
        self._clock = clock
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pool")
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._activations: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def open(
        cls,
        settings: RuntimeSettings,
        runner_factory: RunnerFactory,
        engine_factory: EngineFactory = _torch_engine,
        *,
        warmup: bool = True,
    ) -> ModelPool:
        """Blocking (the start-up thread): every model's weights into the node-local cache, the budgets checked,
        the first model loaded (warmed up with ``warmup``) and active; the others absent."""
        pool_settings = settings.pool
        assert pool_settings is not None
        models = [_cached(settings, name, source, engine_factory) for name, source in pool_settings.models]
        budgets = default_budgets(pool_settings, models[0].engine)
        for model in models:
            if model.weight_bytes > budgets.device_bytes:
                raise ModelTooLarge(
                    f"pool model {model.name} needs {model.weight_bytes} bytes, more than the device budget of "
                    f"{budgets.device_bytes} (--pool-device-bytes)"
                )
        pool = cls(
            models, budgets, wait_s=pool_settings.wait_s, runner_factory=runner_factory, engine_factory=engine_factory
        )
        first = models[0]
        pool._load(first)
        if warmup:
            first.engine.warmup()
        first.state, first.runner = "active", runner_factory(first.engine, first.settings)
        log.info(
            "pool of %d models: device budget %.1f MB, host budget %.1f MB; %s active",
            len(models),
            budgets.device_bytes / 1e6,
            budgets.host_bytes / 1e6,
            first.name,
        )
        return pool

    # The event loop's side.

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def state(self, name: str) -> ModelState:
        return self._models[name].state

    async def runner_for(self, name: str) -> Runner:
        """``name``'s runner, once it is active. Submit to it before the next ``await``: from then on the model is
        busy and stays active. Raises ``PoolBusy`` if it could not be made active within ``wait_s``."""
        model = self._models[name]
        if not model.ready:
            model.waiting += 1
            try:
                while not model.ready:
                    task = self._activations.get(name)
                    if task is None:
                        task = asyncio.get_running_loop().create_task(self._activate(model))
                        self._activations[name] = task
                        task.add_done_callback(lambda _task: self._activations.pop(name, None))
                    await asyncio.shield(task)  # a caller that leaves does not stop the moves under way
            finally:
                model.waiting -= 1
        assert model.runner is not None
        model.last_used = self._clock()
        return model.runner

    def released(self) -> None:
        """A batch's stream ended: a model may have become idle, so an activation waiting for room looks again."""
        self._released.set()

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        found = {i for model in self._models.values() if model.runner for i in model.runner.cancel(request_ids)}
        return tuple(i for i in dict.fromkeys(request_ids) if i in found)

    def report(self) -> PoolReport:
        models = self._models.values()
        return PoolReport(
            device_bytes=sum(m.weight_bytes for m in models if m.state == "active"),
            device_budget_bytes=self.budgets.device_bytes,
            host_bytes=sum(m.weight_bytes for m in models if m.state == "parked"),
            host_budget_bytes=self.budgets.host_bytes,
            models={m.name: m.report() for m in models},
        )

    def runners(self) -> list[Runner]:
        return [model.runner for model in self._models.values() if model.runner is not None]

    @property
    def context_length(self) -> int:
        return min(model.context_length for model in self._models.values())

    def close(self) -> None:
        for task in self._activations.values():
            task.cancel()
        for runner in self.runners():
            runner.close()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def set_aside(self, name: str, to: ModelState) -> ModelState:
        """The gateway's keep-alive asks: take idle ``name`` off the device (``parked``, see ``policy.park``) or to
        disk (``absent``); its state after. A model already there, or further away, stays (so asking again is
        harmless). Raises ``ModelBusy``, moving nothing, while it holds requests, a batch waits for it, it is
        moving, or the pool is making room for another model (its lock is held): never waits for it."""
        model = self._models[name]
        if model.slot().busy:
            raise ModelBusy(f"{name} holds requests or is on its way to the device")
        if _DEPTH[model.state] >= _DEPTH[to]:
            return model.state
        if self._lock.locked():
            raise ModelBusy(f"the pool is moving models; {name} stays {model.state} for now")
        async with self._lock:  # taken at once (it was free): nothing else moves meanwhile
            slots = [other.slot() for other in self._models.values()]
            moves = park(slots, name, self.budgets) if to == "parked" else [Move(name, "absent")]
            await self._carry_out(moves)
        return model.state

    async def _carry_out(self, moves: Sequence[Move]) -> None:
        """Models leave the device (or the host) one by one, each marked moving (no batch lands on it) until done."""
        for move in moves:
            self._models[move.name].moving = True
        try:
            for move in moves:
                await self._off_loop(self._move, self._models[move.name], move.to)
        finally:
            for move in moves:
                self._models[move.name].moving = False

    async def _activate(self, model: PooledModel) -> None:
        async with self._lock:
            if model.ready:
                return
            moves = await self._room_for(model)
            for move in moves:  # mark every model that leaves first: no batch lands on them from now on
                self._models[move.name].moving = True
            model.moving = True
            try:
                for move in moves:
                    await self._off_loop(self._move, self._models[move.name], move.to)
                await self._off_loop(self._bring_in, model)
            finally:
                for move in moves:
                    self._models[move.name].moving = False
                model.moving = False

    async def _room_for(self, model: PooledModel) -> list[Move]:
        """The moves that make room for ``model``, once the models in the way are idle; ``PoolBusy`` at the bound."""
        deadline = asyncio.get_running_loop().time() + self._wait_s
        while True:
            self._released.clear()
            slots = [other.slot() for other in self._models.values()]
            slots = [replace(s, busy=False) if s.name == model.name else s for s in slots]
            moves = make_room(slots, model.name, self.budgets)
            if moves is not None:
                return moves
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    await self._released.wait()
            except TimeoutError:
                busy = ", ".join(s.name for s in slots if s.busy and s.state == "active" and s.name != model.name)
                raise PoolBusy(
                    f"no room to make {model.name} active within {self._wait_s:g} s: {busy} hold requests"
                ) from None

    async def _off_loop(self, work: Callable[..., None], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    # The pool thread's side: the moves themselves. State is written here only while the model is ``moving``,
    # which keeps the event loop's side off it.

    def _move(self, model: PooledModel, to: ModelState) -> None:
        if model.runner is not None:
            model.runner.close()  # waits for its current step: nothing runs on the weights from here on
            model.runner = None
        started = time.monotonic()
        if to == "parked":
            moved = model.engine.park()
            model.state = "parked"
            model.moved("park", _log_move("parked", model, moved, started))
        else:
            was = model.state
            model.engine = self._engine_factory(model.settings, model.model_dir)  # the old one, and its memory, go
            model.state = "absent"
            model.moved("unload", time.monotonic() - started)
            log.info("pool: dropped %s (%s -> absent, %.1f MB)", model.name, was, model.weight_bytes / 1e6)

    def _bring_in(self, model: PooledModel) -> None:
        if model.state == "parked":
            started = time.monotonic()
            moved = model.engine.wake()
            model.moved("wake", _log_move("woke", model, moved, started))
        else:
            self._load(model)
        model.runner = self._runner_factory(model.engine, model.settings)
        model.state = "active"

    def _load(self, model: PooledModel) -> None:
        started = time.monotonic()
        model.engine.load()
        model.weight_bytes = model.engine.weight_bytes()
        model.context_length = model.engine.context_length
        model.moved("load", _log_move("loaded", model, model.weight_bytes, started))


def _log_move(what: str, model: PooledModel, moved: int, started: float) -> float:
    """Log a move that began at ``started``; returns the seconds it took."""
    seconds = time.monotonic() - started
    log.info(
        "pool: %s %s: %.1f MB in %.3f s (%.0f MB/s)",
        what,
        model.name,
        moved / 1e6,
        seconds,
        moved / 1e6 / max(seconds, 1e-9),
    )
    return seconds


def _cached(settings: RuntimeSettings, name: str, source: str, engine_factory: EngineFactory) -> PooledModel:
    """One pool model, its weights in the node-local cache, not loaded."""
    own = replace(settings, model_name=name, source=source, pool=None)
    model_dir = materialise(source, settings.cache_dir, settings.cache_verify).path
    engine = engine_factory(own, model_dir)
    return PooledModel(name, own, model_dir, engine, engine.weight_bytes(), _configured_context(model_dir, settings))


def _configured_context(model_dir: Path, settings: RuntimeSettings) -> int:
    """The model's context length from its ``config.json`` (before it is loaded), capped as the engine caps it."""
    with contextlib.suppress(OSError, ValueError):
        native = int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 0)
        if native > 0:
            return min(native, settings.max_context_tokens) if settings.max_context_tokens else native
    return settings.max_context_tokens or _FALLBACK_CONTEXT


def default_budgets(settings: PoolSettings, engine: ParkingEngine) -> Budgets:
    """The budgets ``settings`` give, defaults filled in: half the device's memory, a quarter of the RAM."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    device = settings.device_budget_bytes or engine.device_memory_bytes() // 2
    host = settings.host_budget_bytes if settings.host_budget_bytes is not None else ram // 4
    return Budgets(device_bytes=device, host_bytes=host)
