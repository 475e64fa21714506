"""The batching window: a dispatcher that found a few requests waits a little for others to join their batch.

Only for a static replica, which runs one batch at a time: a continuous replica takes later requests into its
running batch at its next step anyway, so a request that finds room there goes at once. No window either when
the oldest request read has waited that long already: a backlog (requests that waited through a cold start, or
for a busy replica) goes at once with what is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway.queue.stream import Delivery, Read, RequestQueue
from gateway.settings import ModelSettings


def window_s(settings: ModelSettings, *, continuous: bool) -> float:
    """The batching window for a batch of ``settings``' model to a replica: none for a continuous one."""
    return 0.0 if continuous else settings.max_batch_delay_s


async def read_filled(queue: RequestQueue, model: str, consumer: str, max_size: int, fill_s: float) -> Read:
    """Read up to ``max_size`` queued requests without blocking; if some were there, give others ``fill_s`` to
    join the batch. (To wait for work, wait on ``queue.work.event(model)``, cleared before this read.)"""
    read = await queue.read(model, consumer, max_size)
    batch = read.deliveries
    if batch and len(batch) < max_size and fill_s > 0 and not _waited(batch, fill_s):
        try:
            await asyncio.sleep(fill_s)  # the batching window itself: an intended delay
            read = await queue.read(model, consumer, max_size - len(batch))
            batch += read.deliveries
        except asyncio.CancelledError:
            await asyncio.shield(queue.put_back(model, batch))
            raise
    return Read(batch, read.drained)


def _waited(batch: Sequence[Delivery], fill_s: float) -> bool:
    """Whether the oldest request read has been queued for ``fill_s`` already (by its gateway's clock)."""
    return time.time() - min(d.queued.accepted_at for d in batch) >= fill_s
