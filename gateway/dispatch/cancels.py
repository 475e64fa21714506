"""Remote cancels: tell the replica running a request to drop it at its next decoding step.

A runtime forgets cancellations of ids it does not hold yet, so a cancellation that comes before the runtime has
taken the request's batch (its answer began) waits for that, and is sent then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

import wire
from gateway.replicas.client import RuntimeClient, RuntimeFailed

log = logging.getLogger("kaltstart.dispatch")


class RemoteCancels:
    """The requests of one model's running batches, by replica, and the cancellations sent to those replicas."""

    def __init__(self, *, client: RuntimeClient) -> None:
        self._client = client
        #: Request id -> the replica running it, for the requests of running batches.
        self._running: dict[str, str] = {}
        #: Requests whose batch the replica has taken (its answer began), and cancellations waiting for that.
        self._accepted: set[str] = set()
        self._cancel_when_accepted: set[str] = set()
        self._sending: set[asyncio.Task[None]] = set()

    def running(self, url: str, request_ids: Collection[str]) -> None:
        """A batch of these requests was sent to ``url``."""
        self._running.update(dict.fromkeys(request_ids, url))

    def accepted(self, url: str, request_ids: Collection[str]) -> None:
        """``url`` took the batch of these requests: the cancellations that waited for it are sent now."""
        ids = set(request_ids)
        self._accepted |= ids
        if due := ids & self._cancel_when_accepted:
            self._cancel_when_accepted -= due
            self._send(url, sorted(due))

    def finished(self, request_id: str) -> None:
        """The request is answered (or given up): nothing to cancel any more."""
        self._running.pop(request_id, None)
        self._accepted.discard(request_id)
        self._cancel_when_accepted.discard(request_id)

    def cancel(self, request_id: str) -> None:
        """The request was cancelled (its client left): if it runs here, its replica drops it (once it took it)."""
        url = self._running.get(request_id)
        if url is None:
            return
        if request_id in self._accepted:
            self._send(url, [request_id])
        else:
            self._cancel_when_accepted.add(request_id)

    def in_flight(self) -> set[asyncio.Task[None]]:
        """The cancellations being sent."""
        return set(self._sending)

    def _send(self, url: str, request_ids: Sequence[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel_on(url, request_ids))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _cancel_on(self, url: str, request_ids: Sequence[str]) -> None:
        body = wire.CancelRequest(ids=tuple(request_ids)).model_dump_json()
        try:
            await self._client.post(url + wire.CANCEL_PATH, body)
        except RuntimeFailed as exc:  # the batch ends anyway; only the tokens for nobody are not saved
            log.warning("could not cancel %s on %s: %r", ", ".join(request_ids), url, exc)
