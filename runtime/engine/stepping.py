"""``Engine.generate`` for step engines: one batch, all rows joining at once, stepped until every row has ended.

This is the static scheduler's view of a step engine (and the warm-up's): the rows of one batch and no others.
The continuous scheduler (``runtime.scheduling.continuous``) drives the same ``StepBatch`` but lets rows of many
batches join
and leave. Both check cancellation at the same two points: before a step (a cancelled row leaves without further
compute) and when handing out a step's tokens (a row cancelled during the step gets its ``cancelled`` error instead
of the token).

Rows with LoRA adapters ``reserve`` them first. Rows that cannot have theirs yet (it is still being read, or every
adapter slot is held by rows of this batch) join as a later wave, once the batch has run empty: a static batch takes
rows in only while it is empty.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from runtime.cancellation import Cancellation
from runtime.engine.interface import BatchEvent, RowT, StepBatch, StepEngine
from wire import ErrorEvent, GenerationRequest

__all__ = ["run_to_completion"]

#: How often a batch waiting for an adapter to load looks at its cancellation, in seconds.
_CANCEL_CHECK_S = 0.5


def run_to_completion(
    engine: StepEngine[RowT], requests: Sequence[GenerationRequest], cancellation: Cancellation
) -> Iterator[BatchEvent]:
    """What ``Engine.generate`` promises, on ``engine``'s step batch."""
    pending: list[RowT] = []
    for request in requests:
        prepared = engine.prepare(request)
        if isinstance(prepared, ErrorEvent):
            yield prepared
        else:
            pending.append(prepared)
    if not pending:
        return
    batch = engine.step_batch(running_joins=False)
    rows: list[RowT] = []
    loaded = threading.Event()
    while (rows or pending) and not cancellation.batch:
        yield from _drop_cancelled(batch, rows, cancellation)
        yield from _drop_cancelled(None, pending, cancellation)
        if not rows and pending:
            yield from _join_wave(batch, rows, pending, loaded)
            continue
        if not rows:
            return
        yield from _step(batch, rows, cancellation)
    if rows:
        batch.leave(rows)  # the client left: release what the rows hold


def _step(batch: StepBatch[RowT], rows: list[RowT], cancellation: Cancellation) -> Iterator[BatchEvent]:
    """One step: each row's token (or its ``cancelled`` error); the rows that ended leave."""
    ended: list[RowT] = []
    for next_token in batch.step():
        row = next_token.row
        if cancellation.request(row.completion.request.id):
            yield row.completion.cancel()
        else:
            yield from next_token.push()
        if row.completion.finished:
            ended.append(row)
    if ended and not cancellation.batch:
        _leave(batch, rows, ended)


def _join_wave(
    batch: StepBatch[RowT], rows: list[RowT], pending: list[RowT], loaded: threading.Event
) -> Iterator[BatchEvent]:
    """Into the empty batch: every pending row that can have what it needs; the others stay pending. With none
    joining, wait for a load to end (or a cancellation check)."""
    joining: list[RowT] = []
    waiting: list[RowT] = []
    loaded.clear()
    for row in pending:
        reserved = batch.reserve(row, loaded.set)
        if isinstance(reserved, ErrorEvent):
            yield reserved
        elif reserved == "ready":
            joining.append(row)
        else:
            waiting.append(row)
    pending[:] = waiting
    if joining:
        batch.join(joining)
        rows.extend(joining)
    elif waiting:
        loaded.wait(_CANCEL_CHECK_S)


def _drop_cancelled(
    batch: StepBatch[RowT] | None, rows: list[RowT], cancellation: Cancellation
) -> Iterator[BatchEvent]:
    cancelled = [row for row in rows if cancellation.request(row.completion.request.id)]
    for row in cancelled:
        yield row.completion.cancel()
    if cancelled:
        gone = set(map(id, cancelled))
        rows[:] = [row for row in rows if id(row) not in gone]
        if batch is not None:
            batch.leave(cancelled)


def _leave(batch: StepBatch[RowT], rows: list[RowT], leaving: list[RowT]) -> None:
    batch.leave(leaving)
    gone = set(map(id, leaving))
    rows[:] = [row for row in rows if id(row) not in gone]
