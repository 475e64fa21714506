"""The static scheduler (``--scheduler static``): batches run one at a time, start to finish, on one thread.

A batch that arrives while another runs waits for it to finish, however long its longest request is. This was the
only way before the continuous scheduler (``runtime.scheduling.continuous``) and stays as an option, so the two can be
compared (``docs/runtime.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from runtime.engine.interface import Engine
from runtime.scheduling.batches import Batches, Outlet, RunningBatch
from runtime.settings import SchedulerKind
from wire import GenerationRequest

__all__ = ["StaticScheduler"]

log = logging.getLogger(__name__)


@dataclass
class StaticScheduler:
    """Runs batches one at a time on a dedicated thread, streams their events to the event loop, and cancels
    single requests of any batch it holds (``runtime.scheduling.batches.Runner``)."""

    engine: Engine
    max_batch_size: int = 16
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    )
    _batches: Batches = field(default_factory=Batches)

    @property
    def kind(self) -> SchedulerKind:
        return "static"

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def max_batch_tokens(self) -> int:
        return 0

    @property
    def free_rows(self) -> int:
        """All rows while no batch is held; none while one runs or waits."""
        return 0 if self._batches else self.max_batch_size

    @property
    def open_requests(self) -> int:
        return self._batches.open_requests()

    @property
    def busy(self) -> bool:
        return bool(self._batches)

    def submit(self, requests: Sequence[GenerationRequest]) -> RunningBatch:
        batch, emit = self._batches.open(requests)
        outlet = Outlet(requests, batch.cancellation, emit)
        # The thread reports everything, failures included, through the queue; its future has nothing to add.
        asyncio.get_running_loop().run_in_executor(self._executor, _run_batch, self.engine, requests, outlet)
        return batch

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        return self._batches.cancel(request_ids)

    def close(self) -> None:
        self._batches.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run_batch(engine: Engine, requests: Sequence[GenerationRequest], outlet: Outlet) -> None:
    """The generation thread's side: pull events from the engine and hand each to the loop."""
    cancellation = outlet.cancellation
    try:
        to_run = cancellation.start()
        if cancellation.batch or not to_run:
            return
        for event in engine.generate([r for r in requests if r.id in to_run], cancellation):
            outlet.send(event)
    except Exception:
        ids = ",".join(dict.fromkeys(r.request_id for r in requests if r.request_id)) or None
        log.exception("batch of %d failed", len(requests), extra={"request_id": ids})
        outlet.fail(cancellation.unfinished())
    finally:
        outlet.end()
