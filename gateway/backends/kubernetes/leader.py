"""Which gateway replica may scale models down: the holder of a ``coordination.k8s.io`` Lease.

Built on ``kubernetes_asyncio.leaderelection`` (LeaseLock). Any replica may scale up; only the leader scales
down, so two replicas never race to remove the same capacity.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("kaltstart.leader")


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    #: How long a lease holds without renewal: how long scale-downs pause after the leader dies. Whole
    #: seconds (the Lease API's unit), at least 2.
    duration_s: int = 15

    @property
    def renew_deadline_s(self) -> float:
        return max(1.5, self.duration_s * 2 / 3)

    @property
    def retry_period_s(self) -> float:
        return max(1.0, min(self.renew_deadline_s / 1.5, self.duration_s / 5))


class LeaderElector:
    def __init__(self, api: client.ApiClient, settings: LeaseSettings) -> None:
        self._api = api
        self.settings = settings
        self.is_leader = False

    async def run(self) -> None:
        s = self.settings
        while True:
            lock = LeaseLock(s.name, s.namespace, s.identity, self._api)
            config = electionconfig.Config(
                lock,
                lease_duration=s.duration_s,
                renew_deadline=s.renew_deadline_s,
                retry_period=s.retry_period_s,
                onstarted_leading=self._started,
                onstopped_leading=self._stopped,
            )
            try:
                await leaderelection.LeaderElection(config).run()
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("leader election failed (%r); trying again", exc)
            except Exception:  # a bug in the election must not take the gateway down; scale-downs just pause
                log.exception("leader election crashed; trying again")
            self.is_leader = False
            await asyncio.sleep(s.retry_period_s)  # back off before competing for the lease again

    async def _started(self) -> None:
        self.is_leader = True
        log.info("%s is now the leader: it scales idle models down", self.settings.identity)

    async def _stopped(self) -> None:
        self.is_leader = False
        log.info("%s lost the lease", self.settings.identity)
