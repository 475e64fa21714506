"""The continuous scheduler (``--scheduler continuous``, the default): requests join and leave one running batch
between decoding steps.

One generation thread runs one decoding loop over a ``StepBatch``. Each iteration of the loop:

1. **takes** the batches that arrived (``POST /v1/batch``, any number of them open at once): it marks them started
   (from now on this thread, not the event loop, ends their cancelled requests), prepares each request (tokenizing,
   checking it fits) and queues it for admission, first come first served;
2. **drops** the rows whose request was cancelled (``POST /v1/cancel``: its ``cancelled`` error goes out) or whose
   client left (no more events), waiting or running;
3. **admits** rows from the head of the queue while they fit the ``Budget`` (rows, and KV-cache tokens counted as
   rows times the longest row's prompt + ``max_tokens``), in order: a row that does not fit waits, and so do the
   rows behind it, so nobody starves. A row with a LoRA adapter also needs its adapter on the device
   (``StepBatch.reserve``): while the adapter is being fetched the row waits and the rows behind it may pass; when
   every adapter slot is held by running rows it waits like a row that does not fit. Admitted rows join the batch
   as one group, prefilled in chunks over the next steps while the others decode; a new group is formed once the
   last one is in;
4. **steps**: one decoding step for the rows in, one prefill chunk for the group joining; each row's token goes to
   its request's ``Completion``, and the resulting events to the stream of the POST that brought it. Finished rows
   leave the batch at once; a batch's stream ends (and logs its line) when its last request has ended.

When nothing runs and nothing waits (or only rows whose adapters are loading), the thread sleeps on a condition
until a batch arrives (or a load ends). If a step fails (CUDA
out of memory, say), the rows in the batch end with the ``internal`` error and the loop goes on with a fresh batch;
the rows still waiting run in it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic

from runtime.engine.interface import BatchEvent, RowT, StepEngine, row_cost
from runtime.scheduling.batches import Batches, Outlet, RunningBatch, internal_error
from runtime.scheduling.budget import Budget
from runtime.settings import SchedulerKind
from wire import ErrorEvent, GenerationRequest, TokenEvent

__all__ = ["ContinuousScheduler", "Load"]

log = logging.getLogger(__name__)

#: How long ``close`` waits for the generation thread to finish its step (a step takes milliseconds).
CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Load:
    """The running batch during one step: what the budget bounds (``rows``, ``reserved_tokens``), what the cache
    really held (``cache_tokens``, padding included; never more than ``reserved_tokens``), and how many rows
    waited for admission."""

    step: int
    rows: int
    reserved_tokens: int
    cache_tokens: int
    waiting: int

    def peak(self, other: Load) -> Load:
        """The larger of each field."""
        return Load(*(max(mine, theirs) for mine, theirs in zip(_fields(self), _fields(other), strict=True)))


def _fields(load: Load) -> tuple[int, ...]:
    return (load.step, load.rows, load.reserved_tokens, load.cache_tokens, load.waiting)


class _Submission:
    """One POST's requests on the generation thread, and how many of them are still held (waiting or running)."""

    def __init__(self, requests: Sequence[GenerationRequest], outlet: Outlet) -> None:
        self.requests = requests
        self.outlet = outlet
        self.rows = 0


@dataclass(eq=False)
class _Entry(Generic[RowT]):
    row: RowT
    submission: _Submission
    done: bool = False

    @property
    def request_id(self) -> str:
        return self.row.completion.request.id

    @property
    def cost(self) -> int:
        return row_cost(self.row.completion)

    def leaving(self) -> bool:
        cancellation = self.submission.outlet.cancellation
        return cancellation.batch or cancellation.request(self.request_id)


class ContinuousScheduler(Generic[RowT]):
    """``runtime.scheduling.batches.Runner`` with one running batch that rows of every open POST join and leave
    between steps.

    ``observer`` (for tests and diagnostics) is called on the generation thread after every step with that step's
    ``Load``; ``high_water`` is the peak of every field so far."""

    def __init__(
        self, engine: StepEngine[RowT], budget: Budget, observer: Callable[[Load], None] | None = None
    ) -> None:
        self._engine = engine
        self.budget = budget
        self._observer = observer
        self._batches = Batches()
        self._wake = threading.Condition()
        self._inbox: list[_Submission] = []
        self._closed = False
        self._loaded = False  # an adapter load ended since the thread last looked (set under _wake)
        # Only the generation thread touches what follows (after this constructor).
        self._step_batch = engine.step_batch()  # raises EngineError if rows cannot join a running batch
        self._waiting: deque[_Entry[RowT]] = deque()
        self._admitted: dict[int, _Entry[RowT]] = {}  # by id(row), in admission order
        self._steps = 0
        self._stalled = False  # nothing runs, and every row waiting waits for an adapter load
        self.high_water = Load(0, 0, 0, 0, 0)
        self._thread = threading.Thread(target=self._run, name="generate", daemon=True)
        self._thread.start()

    # The event loop's side.

    @property
    def kind(self) -> SchedulerKind:
        return "continuous"

    @property
    def context_length(self) -> int:
        """The engine's, unless the token budget is smaller: a request longer than that could never be admitted."""
        return min(self._engine.context_length, self.budget.tokens)

    @property
    def max_batch_tokens(self) -> int:
        return self.budget.tokens

    @property
    def free_rows(self) -> int:
        return max(0, self.budget.rows - self._batches.open_requests())

    @property
    def open_requests(self) -> int:
        return self._batches.open_requests()

    @property
    def busy(self) -> bool:
        return bool(self._batches)

    def submit(self, requests: Sequence[GenerationRequest]) -> RunningBatch:
        batch, emit = self._batches.open(requests)
        with self._wake:
            self._inbox.append(_Submission(requests, Outlet(requests, batch.cancellation, emit)))
            self._wake.notify()
        return batch

    def cancel(self, request_ids: Sequence[str]) -> tuple[str, ...]:
        return self._batches.cancel(request_ids)

    def close(self) -> None:
        """Cancel every batch held and stop the generation thread, waiting for the step it may be in: a process
        must not exit (or a test go on) while that thread is inside torch."""
        self._batches.close()
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the generation thread is still busy %.0f s after close", CLOSE_TIMEOUT_S)

    # The generation thread's side.

    def _run(self) -> None:
        while (arrivals := self._wait()) is not None:
            try:
                self._iterate(arrivals)
            except Exception:
                log.exception("a step of the running batch failed; its %d requests fail", len(self._admitted))
                self._fail_admitted()

    def _wait(self) -> list[_Submission] | None:
        """The batches that arrived since the last step, once there is anything to do; None once closed."""
        with self._wake:
            self._wake.wait_for(self._work_to_do)
            if self._closed:
                return None
            arrivals, self._inbox, self._loaded = self._inbox, [], False
            return arrivals

    def _work_to_do(self) -> bool:
        waiting = bool(self._waiting) and (self._loaded or not self._stalled)
        return self._closed or bool(self._inbox) or bool(self._admitted) or waiting

    def _adapter_loaded(self) -> None:
        """Called from the adapters' loading thread when a load ends: rows may be admitted now."""
        with self._wake:
            self._loaded = True
            self._wake.notify()

    def _iterate(self, arrivals: list[_Submission]) -> None:
        for submission in arrivals:
            self._take(submission)
        self._drop_left()
        self._admit()
        self._stalled = not self._admitted and bool(self._waiting)
        if self._admitted:
            self._step()

    def _take(self, submission: _Submission) -> None:
        cancellation = submission.outlet.cancellation
        to_run = cancellation.start()
        if not cancellation.batch:
            for request in submission.requests:
                if request.id in to_run:
                    self._queue(request, submission)
        if submission.rows == 0:
            submission.outlet.end()

    def _queue(self, request: GenerationRequest, submission: _Submission) -> None:
        prepared = self._prepare(request)
        if isinstance(prepared, ErrorEvent):
            submission.outlet.send(prepared)
            return
        submission.rows += 1
        self._waiting.append(_Entry(prepared, submission))

    def _prepare(self, request: GenerationRequest) -> RowT | ErrorEvent:
        try:
            prepared = self._engine.prepare(request)
        except Exception:
            log.exception("cannot prepare request %s", request.id, extra={"request_id": request.request_id})
            return internal_error(request.id)
        if isinstance(prepared, ErrorEvent) or (cost := row_cost(prepared.completion)) <= self.budget.tokens:
            return prepared
        message = f"prompt plus max_tokens is {cost} tokens, more than this replica's max_batch_tokens"
        return ErrorEvent(id=request.id, code="invalid_request", message=f"{message} of {self.budget.tokens}")

    def _drop_left(self) -> None:
        """Rows whose request was cancelled, or whose client left, leave now: waiting or running."""
        staying: deque[_Entry[RowT]] = deque()
        for entry in self._waiting:
            if entry.leaving():
                self._end_cancelled(entry)
            else:
                staying.append(entry)
        self._waiting = staying
        leaving = [entry for entry in self._admitted.values() if entry.leaving()]
        for entry in leaving:
            self._end_cancelled(entry)
        self._leave(leaving)

    def _admit(self) -> None:
        """Rows from the head of the queue, while they fit, join the batch as one group; rows whose adapter is
        still loading keep their place and let the others pass."""
        if self._step_batch.joining or not self._waiting:
            return
        rows, longest = len(self._admitted), max((e.cost for e in self._admitted.values()), default=0)
        group: list[_Entry[RowT]] = []
        passed: deque[_Entry[RowT]] = deque()
        while self._waiting and self.budget.admits(rows + 1, max(longest, self._waiting[0].cost)):
            entry = self._waiting[0]
            reserved = self._step_batch.reserve(entry.row, self._adapter_loaded)
            if reserved == "full":
                break
            self._waiting.popleft()
            if reserved == "loading":
                passed.append(entry)
            elif isinstance(reserved, ErrorEvent):
                self._end(entry, reserved)
            else:
                group.append(entry)
                rows, longest = rows + 1, max(longest, entry.cost)
                self._admitted[id(entry.row)] = entry
        self._waiting.extendleft(reversed(passed))
        if group:
            self._step_batch.join([entry.row for entry in group])

    def _step(self) -> None:
        tokens = self._step_batch.step()
        self._steps += 1
        self._observe()
        ended: list[_Entry[RowT]] = []
        for next_token in tokens:
            entry = self._admitted[id(next_token.row)]
            if entry.leaving():
                self._end_cancelled(entry)
            else:
                for event in next_token.push():
                    self._deliver(entry, event)
            if entry.done:
                ended.append(entry)
        self._leave(ended)

    def _observe(self) -> None:
        rows = len(self._admitted)
        longest = max((e.cost for e in self._admitted.values()), default=0)
        load = Load(self._steps, rows, rows * longest, self._step_batch.cache_tokens, len(self._waiting))
        self.high_water = self.high_water.peak(load)
        if self._observer is not None:
            self._observer(load)

    def _deliver(self, entry: _Entry[RowT], event: BatchEvent) -> None:
        if isinstance(event, TokenEvent):
            entry.submission.outlet.send(event)
        else:
            self._end(entry, event)

    def _end_cancelled(self, entry: _Entry[RowT]) -> None:
        if entry.submission.outlet.cancellation.batch:
            self._end(entry, None)  # its client left: nobody reads its events
        else:
            self._end(entry, entry.row.completion.cancel())

    def _end(self, entry: _Entry[RowT], event: BatchEvent | None) -> None:
        """The row's final event (None: none, its stream is gone); the stream ends after its last request."""
        entry.done = True
        if event is not None:
            entry.submission.outlet.send(event)
        entry.submission.rows -= 1
        if entry.submission.rows == 0:
            entry.submission.outlet.end()

    def _leave(self, entries: list[_Entry[RowT]]) -> None:
        for entry in entries:
            del self._admitted[id(entry.row)]
        if entries:
            self._step_batch.leave([entry.row for entry in entries])

    def _fail_admitted(self) -> None:
        """After a failed step: every row in the batch ends with the ``internal`` error; a fresh batch is made."""
        failed = [entry for entry in self._admitted.values() if not entry.done]
        try:
            self._step_batch.leave([entry.row for entry in self._admitted.values()])  # their adapters' pins
        except Exception:
            log.exception("cannot drop the failed batch's rows")
        self._admitted.clear()
        self._step_batch = self._engine.step_batch()
        for entry in failed:
            leaving = entry.submission.outlet.cancellation.batch
            self._end(entry, None if leaving else internal_error(entry.request_id))
