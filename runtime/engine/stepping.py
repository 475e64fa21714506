"""``Engine.generate`` for step engines: one batch, all rows joining at once, stepped until every row has ended.

This is the static scheduler's view of a step engine (and the warm-up's): the rows of one batch and no others.
The continuous scheduler (``runtime.scheduling.continuous``) drives the same ``StepBatch`` but lets rows of many
batches join
and leave. Both check cancellation at the same two points: before a step (a cancelled row leaves without further
compute) and when handing out a step's tokens (a row cancelled during the step gets its ``cancelled`` error instead
of the token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from runtime.cancellation import Cancellation
from runtime.engine.interface import BatchEvent, RowT, StepBatch, StepEngine
from wire import ErrorEvent, GenerationRequest

__all__ = ["run_to_completion"]


def run_to_completion(
    engine: StepEngine[RowT], requests: Sequence[GenerationRequest], cancellation: Cancellation
) -> Iterator[BatchEvent]:
    """What ``Engine.generate`` promises, on ``engine``'s step batch."""
    rows: list[RowT] = []
    for request in requests:
        prepared = engine.prepare(request)
        if isinstance(prepared, ErrorEvent):
            yield prepared
        else:
            rows.append(prepared)
    if not rows:
        return
    batch = engine.step_batch(running_joins=False)
    batch.join(rows)
    while rows and not cancellation.batch:
        yield from _drop_cancelled(batch, rows, cancellation)
        if not rows:
            return
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


def _drop_cancelled(batch: StepBatch[RowT], rows: list[RowT], cancellation: Cancellation) -> Iterator[BatchEvent]:
    cancelled = [row for row in rows if cancellation.request(row.completion.request.id)]
    for row in cancelled:
        yield row.completion.cancel()
    if cancelled:
        _leave(batch, rows, cancelled)


def _leave(batch: StepBatch[RowT], rows: list[RowT], leaving: list[RowT]) -> None:
    batch.leave(leaving)
    gone = set(map(id, leaving))
    rows[:] = [row for row in rows if id(row) not in gone]
