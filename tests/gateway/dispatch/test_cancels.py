"""Remote cancels against a fake runtime (``fakes``): a cancellation reaches the replica only once it took the
batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.gateway.dispatch.fakes import Answer, HeldStream, Rig, echo

pytestmark = pytest.mark.integration


async def test_a_cancel_before_the_runtime_took_the_batch_is_sent_once_it_has(
    make_rig: Callable[[Answer], Rig],
) -> None:
    release = asyncio.Event()
    rig = make_rig(lambda batch: httpx.Response(200, stream=HeldStream(echo(batch), release)))
    rig.runtime.take_batches = asyncio.Event()
    await rig.enqueue("gone")
    await rig.dispatcher.step()
    rig.dispatcher.cancel("gone")  # the client left; the batch is on its way but not taken yet
    async with asyncio.timeout(5):
        await rig.runtime.posted.wait()  # the batch reached the runtime, which holds it untaken
    rig.runtime.take_batches.set()
    await rig.runtime.wait_for_cancels(1)
    assert rig.runtime.cancels == [("gone",)]
    assert rig.runtime.early_cancels == 0  # a runtime would forget a cancel for an id it does not hold
    release.set()
    await rig.dispatcher.drain(5)
