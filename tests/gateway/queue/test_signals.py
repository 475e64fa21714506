"""Work signals (``gateway.queue.signals``): who is woken for new work, in-process and from other gateways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.queue.signals import WorkSignals, message

pytestmark = pytest.mark.unit


def test_another_gateways_work_wakes_dispatchers_unless_it_takes_it_itself() -> None:
    signals = WorkSignals("here")
    heard: list[str] = []
    signals.subscribe(heard.append)
    event = signals.event("m")
    signals.received(message("there", "m", taken=True))
    assert not event.is_set() and heard == ["m"]  # the autoscaler is told all the same
    signals.received(message("there", "m", taken=False))
    assert event.is_set() and heard == ["m", "m"]


def test_our_own_messages_and_malformed_ones_are_ignored() -> None:
    signals = WorkSignals("here")
    heard: list[str] = []
    signals.subscribe(heard.append)
    signals.received(message("here", "m", taken=False))  # told in-process when it was added
    signals.received("no separators")
    signals.received("gw\nmodel-from-an-older-gateway")
    assert heard == [] and not signals.event("m").is_set()


def test_a_model_name_may_hold_anything_after_the_header() -> None:
    signals = WorkSignals("here")
    heard: list[str] = []
    signals.subscribe(heard.append)
    signals.received(message("there", "org/model\nwith newline", taken=False))
    assert heard == ["org/model\nwith newline"]


async def test_work_is_taken_here_only_while_a_dispatcher_waits_for_it() -> None:
    signals = WorkSignals("here")
    assert not signals.taken_here("m")
    waiting = asyncio.create_task(signals.wait("m", timeout_s=5))
    await asyncio.sleep(0)  # the waiter is registered
    assert signals.taken_here("m") and not signals.taken_here("other")
    signals.notify("m")
    await waiting
    assert not signals.taken_here("m")


async def test_a_wait_ends_after_its_timeout_without_a_signal() -> None:
    signals = WorkSignals("here")
    await signals.wait("m", timeout_s=0.01)
    assert not signals.taken_here("m")


def test_notify_all_wakes_every_model_and_tells_listeners_so() -> None:
    signals = WorkSignals("here")
    heard: list[str] = []
    signals.subscribe(heard.append)
    events = [signals.event("a"), signals.event("b")]
    signals.notify_all()
    assert all(e.is_set() for e in events) and heard == [""]


def test_the_documented_message_format_is_the_one_sent() -> None:
    documented = r"<gateway id>\n<taken>\n<model>"
    assert message("<gateway id>", "<model>", taken=True) == documented.replace(r"\n", "\n").replace("<taken>", "1")
    repo = Path(__file__).resolve().parents[3]
    for path in ("gateway/store/keys.py", "docs/architecture.md"):
        assert documented in (repo / path).read_text(), f"{path} gives another format of keys.WORK's messages"
    assert documented.replace("\\", "\\\\") in (repo / "gateway/queue/signals.py").read_text()
