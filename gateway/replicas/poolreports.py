"""Pool replicas' reports (``wire.PoolReport``), read again from their ``/readyz`` when their models moved.

A batch answer's headers say where a pool replica holds its models (``gateway.replicas.residency``), not how often
they moved or what memory they use; its ``/readyz`` says that. ``PoolReports`` reads it whenever the headers
brought news (``ReplicaResidency.on_stale``), so the pool metrics follow every move this gateway's batches see at
the cost of one ``GET`` per move, and nothing while the pool is idle; ``/metrics`` serves what was read last.
Bounds: one read under way per replica, and at most one more asked for meanwhile (it runs after, and stands for
every move reported until then), each read within ``READ_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

import wire
from gateway.background import Background
from gateway.replicas.client import RuntimeClient, RuntimeFailed
from gateway.replicas.residency import ReplicaResidency

log = logging.getLogger("kaltstart.pools")

#: Longest a report read may take (an answer takes milliseconds); the report stays as it was if it takes longer.
READ_TIMEOUT_S = 2.0


class PoolReports:
    def __init__(self, client: RuntimeClient, residency: ReplicaResidency) -> None:
        self._client = client
        self._residency = residency
        self._under_way: set[str] = set()
        self._again: set[str] = set()
        self._background = Background()
        residency.on_stale(self.refresh)

    def refresh(self, url: str) -> None:
        """Read ``url``'s report again (after the read under way, if one is)."""
        if url in self._under_way:
            self._again.add(url)
            return
        self._under_way.add(url)
        self._background.spawn(self._read(url))

    async def _read(self, url: str) -> None:
        try:
            while True:
                self._again.discard(url)
                report = await self._report(url)
                if report is not None:
                    self._residency.learn_report(url, report)
                if url not in self._again:
                    return
        finally:
            self._under_way.discard(url)

    async def _report(self, url: str) -> wire.PoolReport | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                body = await self._client.get(url + wire.READY_PATH)
            return wire.ReadyBody.model_validate_json(body).pool
        except (RuntimeFailed, ValidationError, TimeoutError) as exc:
            log.debug("no pool report from %s: %r", url, exc)
            return None

    async def drain(self) -> None:
        """Wait for the reads under way (tests)."""
        await self._background.drain()

    async def stop(self) -> None:
        await self._background.cancel()
