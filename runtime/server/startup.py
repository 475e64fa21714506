"""A runtime's start, phase by phase, on a background thread: (standby ->) cache -> imports -> load -> warm-up.

``Readiness`` is where the start stands, read by the HTTP routes and the announcer. ``start_in_background`` runs
the phases off the event loop and reports each one (``Readiness.phase``), so ``/readyz`` and the announcements
can say what a starting replica is doing. A *standby* runtime (``--standby``) first imports the engine with no
model known, then waits until ``Readiness.claim`` names its model; the rest of the start is the same.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.factory import create_engine
from runtime.engine.interface import AdapterHolder, Engine, LoadReport, as_step_engine
from runtime.errors import EngineError
from runtime.pool.models import ModelPool
from runtime.scheduling.batches import Runner
from runtime.scheduling.budget import Budget
from runtime.scheduling.continuous import ContinuousScheduler
from runtime.scheduling.static import StaticScheduler
from runtime.settings import RuntimeSettings
from runtime.weights.cache import materialise
from wire import Announcement, ReadyBody, ReplicaState, StartupPhase, StartupTimings

__all__ = [
    "Loader",
    "Readiness",
    "make_runner",
    "preimport",
    "prepare_engine",
    "process_age",
    "start_in_background",
]

log = logging.getLogger(__name__)

#: Makes the ready engine; called on the start-up thread.
Loader = Callable[[], Engine]
#: Told of each phase as it begins; called on the start-up thread.
PhaseListener = Callable[[StartupPhase], None]


class AlreadyClaimed(Exception):
    """A standby runtime can be claimed once."""


@dataclass
class Readiness:
    """Where start-up stands. ``decided`` is set once the engine is ready (with its runner) or loading failed.
    ``settings`` are the standby's own until a claim replaces them with the claimed model's."""

    settings: RuntimeSettings
    engine: Engine | None = None
    runner: Runner | None = None
    pool: ModelPool | None = None
    failed: bool = False
    closed: bool = False
    startup: StartupTimings | None = None
    phase: StartupPhase | None = None
    claimed_at: float | None = None
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    on_change: Callable[[], None] = lambda: None
    _claimed: threading.Event = field(default_factory=threading.Event)

    @property
    def standby(self) -> bool:
        """Waiting for (or loading after) a claim."""
        return self.settings.standby

    @property
    def state(self) -> ReplicaState:
        if self.closed or self.failed:
            return "stopping"
        return "ready" if self.runner is not None or self.pool is not None else "starting"

    def claim(self, settings: RuntimeSettings) -> None:
        """Serve ``settings``' model (a standby's ``POST /v1/claim``). Raises ``AlreadyClaimed`` after the first."""
        if not self.settings.standby or self._claimed.is_set():
            raise AlreadyClaimed()
        self.settings = settings
        self.claimed_at = time.monotonic()
        self._claimed.set()

    def wait_for_claim(self) -> bool:
        """On the start-up thread: block until claimed (True) or closed (False)."""
        while not self._claimed.wait(0.5):
            if self.closed:
                return False
        return not self.closed

    def set_phase(self, phase: StartupPhase) -> None:
        self.phase = phase
        self.on_change()

    def close(self) -> None:
        """The app shuts down: end the runner's batches and stop its thread, now or once loading is done."""
        self.closed = True
        self._claimed.set()
        if self.runner is not None:
            self.runner.close()
        if self.pool is not None:
            self.pool.close()

    def ready_body(self, *, with_pool: bool = True) -> ReadyBody | None:
        """The ``/readyz`` report; ``with_pool=False`` leaves the pool's models and the loaded adapters out
        (announcements: bounded in bytes, they name the models only)."""
        if self.pool is not None:
            return self._pool_body(self.pool, with_pool)
        runner = self.runner
        if runner is None:
            return None
        return ReadyBody(
            model=self.settings.served_names[0],
            max_batch_size=self.settings.max_batch_size,
            context_length=runner.context_length,
            scheduler=runner.kind,
            max_batch_tokens=runner.max_batch_tokens,
            free_rows=runner.free_rows,
            startup=self.startup,
            models=self.settings.served_names if len(self.settings.served_names) > 1 else (),
            adapters=self.loaded_adapters() if with_pool else (),
        )

    def loaded_adapters(self) -> tuple[str, ...]:
        """The LoRA adapters on the device now (none for an engine that serves none)."""
        engine = self.engine
        return engine.loaded_adapters() if isinstance(engine, AdapterHolder) else ()

    def serves_adapters(self) -> bool:
        return isinstance(self.engine, AdapterHolder) and self.settings.max_adapters > 0

    def _pool_body(self, pool: ModelPool, with_pool: bool) -> ReadyBody:
        """A pool's report: the scheduler kind asked for, and rows free counted over every active model."""
        runners = pool.runners()
        size = self.settings.max_batch_size
        return ReadyBody(
            model=self.settings.served_names[0],
            max_batch_size=size,
            context_length=pool.context_length,
            scheduler=runners[0].kind if runners else self.settings.scheduler,
            max_batch_tokens=min((r.max_batch_tokens for r in runners), default=0),
            free_rows=max(0, size - sum(r.open_requests for r in runners)),
            startup=self.startup,
            models=self.settings.served_names if len(self.settings.served_names) > 1 else (),
            pool=pool.report() if with_pool else None,
        )

    def announcement(self, url: str, interval_s: float) -> Announcement:
        claimed_at = self.claimed_at
        elapsed = (process_age() or 0.0) if claimed_at is None else time.monotonic() - claimed_at
        state = self.state
        return Announcement(
            url=url,
            models=() if self.settings.standby and self.claimed_at is None else self.settings.served_names,
            state=state,
            phase=self.phase if state == "starting" else None,
            elapsed_s=round(max(0.0, elapsed), 3),
            interval_s=interval_s,
            ready=self.ready_body(with_pool=False) if state == "ready" else None,
        )


def preimport(settings: RuntimeSettings) -> None:
    """A standby's head start: everything a torch start imports before it knows its model."""
    if settings.engine != "torch":
        return
    importlib.import_module("runtime.torch_engine.engine")
    importlib.import_module("transformers.core_model_loading")  # pulls in torch.distributed.tensor: ~1 s
    for family in settings.standby_families:
        try:
            importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError as exc:
            log.warning("standby: cannot import the %s model family: %s", family, exc)


def prepare_engine(
    settings: RuntimeSettings,
    on_timings: Callable[[StartupTimings], None] | None = None,
    on_phase: PhaseListener = lambda _phase: None,
    *,
    claimed: bool = False,
) -> Engine:
    """Resolve the weights into the cache, load them and warm up; blocking. Logs where the time went, and hands
    the same numbers to ``on_timings`` (for ``/readyz``). ``claimed``: a standby took this model, so the process
    start and most imports were paid before, and the timings run from now."""
    process_s = 0.0 if claimed else process_age()
    started = time.monotonic()
    on_phase("cache")
    model_dir = None
    if settings.engine == "torch":
        assert settings.source is not None  # RuntimeSettings checks this for the torch engine
        model_dir = materialise(settings.source, settings.cache_dir, settings.cache_verify).path
    cached = time.monotonic()
    on_phase("imports")
    engine = create_engine(settings, model_dir)
    imported = time.monotonic()
    on_phase("load")
    report = engine.load()
    loaded = time.monotonic()
    if settings.warmup:
        on_phase("warmup")
        engine.warmup()
    warmed = time.monotonic()
    if report.bytes_loaded:
        _log_load(report)
    timings = StartupTimings(
        process_s=None if process_s is None else round(process_s, 3),
        cache_s=round(cached - started, 3),
        imports_s=round(imported - cached, 3),
        load_s=round(loaded - imported, 3),
        warmup_s=round(warmed - loaded, 3),
        total_s=round(warmed - started + (process_s or 0.0), 3),
        standby=claimed,
    )
    log.info(
        "engine ready in %.2f s: cache %.2f s, imports %.2f s, load %.2f s, warmup %.2f s (%s %s)",
        warmed - started,
        timings.cache_s,
        timings.imports_s,
        timings.load_s,
        timings.warmup_s,
        "claimed from standby, claim to ready" if claimed else "process start to ready",
        "unknown" if process_s is None else f"{timings.total_s:.2f} s",
    )
    if on_timings is not None:
        on_timings(timings)
    return engine


def process_age() -> float | None:
    """Seconds since the operating system started this process (Linux: ``/proc``, 10 ms steps); None elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
            fields = stat.read().rsplit(")", 1)[1].split()
            booted_s = float(uptime.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        return max(0.0, booted_s - int(fields[19]) / ticks)  # field 22 of stat(5): starttime, in clock ticks
    except (OSError, ValueError, IndexError):
        return None


def _log_load(report: LoadReport) -> None:
    log.info(
        "loaded %.1f MB of weights on %s as %s in %.2f s (%.1f MB/s)",
        report.bytes_loaded / 1e6,
        report.device,
        report.dtype,
        report.seconds,
        report.bytes_loaded / 1e6 / max(report.seconds, 1e-9),
    )


def make_runner(engine: Engine, settings: RuntimeSettings) -> Runner:
    """The scheduler ``settings`` ask for. An engine that cannot let rows join a running batch (a test double, a
    model whose cache layers cannot be padded) runs batches one at a time, and says so in the log and ``/readyz``."""
    if settings.scheduler == "continuous" and (scheduler := _continuous(engine, settings)) is not None:
        return scheduler
    return StaticScheduler(engine, settings.max_batch_size)


def _continuous(engine: Engine, settings: RuntimeSettings) -> ContinuousScheduler[Any] | None:
    step_engine = as_step_engine(engine)
    try:
        if step_engine is None:
            raise EngineError(f"{type(engine).__name__} cannot run rows step by step")
        tokens = settings.max_batch_tokens or step_engine.default_batch_tokens()
        scheduler = ContinuousScheduler(step_engine, Budget(rows=settings.max_batch_size, tokens=tokens))
    except EngineError as exc:
        log.warning("continuous batching is not possible (%s): running batches one at a time", exc)
        return None
    log.info("continuous batching: up to %d rows and %d KV-cache tokens", settings.max_batch_size, tokens)
    return scheduler


def start_in_background(
    readiness: Readiness, loop: asyncio.AbstractEventLoop, loader: Loader | None, on_fatal: Callable[[], None]
) -> None:
    """Run the start on its own thread; ``loader`` replaces ``prepare_engine`` (tests)."""
    threading.Thread(target=_start, args=(readiness, loop, loader, on_fatal), name="load", daemon=True).start()


def _start(
    readiness: Readiness, loop: asyncio.AbstractEventLoop, loader: Loader | None, on_fatal: Callable[[], None]
) -> None:
    def phase(name: StartupPhase) -> None:
        loop.call_soon_threadsafe(readiness.set_phase, name)

    def record(timings: StartupTimings) -> None:
        readiness.startup = timings

    try:
        claimed = readiness.standby
        if claimed:
            phase("standby")
            _standby(readiness)
            if readiness.closed:
                return
        settings = readiness.settings
        if settings.pool is not None and loader is None:
            _start_pool(readiness, loop, on_fatal)
            return
        engine = loader() if loader else prepare_engine(settings, record, phase, claimed=claimed)
        runner = make_runner(engine, settings)
    except Exception:
        log.exception("cannot start serving %s", readiness.settings.model_name)
        _call_on_loop(loop, lambda: _failed(readiness, on_fatal))
        return
    if not _call_on_loop(loop, lambda: _ready(readiness, engine, runner)):
        runner.close()  # the event loop is gone: nobody will ever use the runner


def _start_pool(readiness: Readiness, loop: asyncio.AbstractEventLoop, on_fatal: Callable[[], None]) -> None:
    """A pool runtime's start: every model cached, the first one loaded (``ModelPool.open``)."""
    settings = readiness.settings
    process_s = process_age()
    started = time.monotonic()
    try:
        loop.call_soon_threadsafe(readiness.set_phase, "load")
        pool = ModelPool.open(settings, make_runner, warmup=settings.warmup)  # asyncio's Lock binds on first use
    except Exception:
        log.exception("cannot start the pool of %s", settings.model_name)
        _call_on_loop(loop, lambda: _failed(readiness, on_fatal))
        return
    total = time.monotonic() - started
    readiness.startup = StartupTimings(
        process_s=None if process_s is None else round(process_s, 3),
        cache_s=0.0,
        imports_s=0.0,
        load_s=round(total, 3),
        warmup_s=0.0,
        total_s=round(total + (process_s or 0.0), 3),
    )
    if not _call_on_loop(loop, lambda: _pool_ready(readiness, pool)):
        pool.close()


def _pool_ready(readiness: Readiness, pool: ModelPool) -> None:
    if readiness.closed:
        pool.close()
        return
    readiness.pool = pool
    readiness.decided.set()
    readiness.on_change()
    log.info("ready: serving %s at %s (pool)", readiness.settings.model_name, readiness.settings.url)


def _standby(readiness: Readiness) -> None:
    started = time.monotonic()
    preimport(readiness.settings)
    # The imports leave a large heap of long-lived objects: collect once now and move them out of the collector's
    # sight, or a full collection scans them all on the claimed model's critical path (its warm-up, its first
    # request).
    gc.collect()
    gc.freeze()
    log.info("standby: engine imported in %.2f s; waiting for a claim (POST /v1/claim)", time.monotonic() - started)
    if readiness.wait_for_claim():
        log.info("claimed: serving %s", readiness.settings.model_name)


def _call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> bool:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        return False
    return True


def _failed(readiness: Readiness, on_fatal: Callable[[], None]) -> None:
    readiness.failed = True
    readiness.decided.set()
    readiness.on_change()
    on_fatal()


def _ready(readiness: Readiness, engine: Engine, runner: Runner) -> None:
    if readiness.closed:  # the app shut down while the model loaded
        runner.close()
        return
    readiness.engine, readiness.runner = engine, runner
    readiness.decided.set()
    readiness.on_change()
    log.info("ready: serving %s at %s", readiness.settings.model_name, readiness.settings.url)
