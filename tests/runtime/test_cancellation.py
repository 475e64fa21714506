"""The cancellation state of one batch: which requests a cancel takes, and who must send their final events."""

from __future__ import annotations

import pytest

from runtime.cancellation import Cancellation, Taken

pytestmark = pytest.mark.unit


def test_a_cancel_before_the_start_settles_the_requests_at_once() -> None:
    cancellation = Cancellation(["a", "b", "c"])
    assert cancellation.cancel(["b", "x", "b"]) == Taken(("b",), before_start=True)
    assert cancellation.request("b") and not cancellation.request("a")
    assert cancellation.unfinished() == ["a", "c"]
    assert cancellation.cancel(["b"]) == Taken((), before_start=True), "its cancelled event is already sent"
    assert cancellation.start() == {"a", "c"}


def test_a_cancel_while_running_leaves_the_final_event_to_the_generation_thread() -> None:
    cancellation = Cancellation(["a", "b"])
    assert cancellation.start() == {"a", "b"}
    assert cancellation.cancel(["a"]) == Taken(("a",), before_start=False)
    assert cancellation.cancel(["a"]).ids == ("a",), "still open: a retried cancel takes it again"
    assert cancellation.unfinished() == ["a", "b"]
    assert cancellation.finish("a"), "whatever final event the engine made, it must become the cancelled error"
    assert not cancellation.finish("b")
    assert cancellation.cancel(["a", "b"]).ids == (), "both have their final events"
    assert cancellation.cancelled_count == 1


def test_a_finished_request_cannot_be_cancelled_any_more() -> None:
    cancellation = Cancellation(["a"])
    cancellation.start()
    assert not cancellation.finish("a")
    assert cancellation.cancel(["a"]).ids == ()
    assert not cancellation.request("a")


def test_once_the_whole_batch_is_cancelled_single_cancels_take_nothing() -> None:
    cancellation = Cancellation(["a"])
    cancellation.cancel_batch()
    assert cancellation.batch
    assert cancellation.cancel(["a"]).ids == ()
    assert cancellation.unfinished() == ["a"], "left unfinished: the log line counts them"


def test_without_ids_only_the_whole_batch_can_be_cancelled() -> None:
    cancellation = Cancellation()
    assert cancellation.cancel(["warmup"]).ids == ()
    assert not cancellation.request("warmup") and not cancellation.batch
