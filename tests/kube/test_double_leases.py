"""Leases, and kubernetes_asyncio's own leader election (LeaseLock) against the double."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.kube.double import ApiDouble

pytestmark = pytest.mark.kubernetes
LEASE = "kaltstart-gateway"
# The shortest timings kubernetes_asyncio accepts: retry >= 1 s, renew deadline > 1.2 x retry, lease > renew,
# and the lease duration a whole number (LeaseLock does int(str(lease_duration))).
RETRY_S, RENEW_DEADLINE_S, LEASE_DURATION_S = 1.0, 1.5, 2
TAKEOVER_DEADLINE_S = 10.0


@dataclass
class Candidate:
    identity: str
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self, kube_client: client.ApiClient) -> None:
        async def started() -> None:
            self.leading.set()

        async def stopped() -> None:
            self.stopped.set()

        lock = LeaseLock(LEASE, "default", self.identity, kube_client)
        config = electionconfig.Config(lock, LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_S, started, stopped)
        self.task = asyncio.create_task(leaderelection.LeaderElection(config).run())

    async def stop(self) -> None:
        """Stop campaigning and renewing, as a crashed or partitioned replica would."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def _first_leader(*candidates: Candidate) -> None:
    """Wait until one of the candidates leads; an elector that crashes fails the test with its error."""
    waits = [asyncio.create_task(c.leading.wait()) for c in candidates]
    tasks = [c.task for c in candidates if c.task is not None]
    try:
        async with asyncio.timeout(TAKEOVER_DEADLINE_S):
            done, _ = await asyncio.wait([*waits, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    for task in done:
        if task in tasks:
            task.result()  # re-raises what stopped the elector


def _lease_body(holder: str) -> client.V1Lease:
    spec = client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=2)
    return client.V1Lease(metadata=client.V1ObjectMeta(name=LEASE), spec=spec)


async def test_lease_create_get_replace_with_conflicts(kube_client: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(kube_client)
    await leases.create_namespaced_lease("default", _lease_body("a"))
    with pytest.raises(ApiException) as duplicate:
        await leases.create_namespaced_lease("default", _lease_body("b"))
    first = await leases.read_namespaced_lease(LEASE, "default")
    second = await leases.read_namespaced_lease(LEASE, "default")
    first.spec.holder_identity = "b"
    await leases.replace_namespaced_lease(LEASE, "default", first)
    second.spec.holder_identity = "c"
    with pytest.raises(ApiException) as stale:
        await leases.replace_namespaced_lease(LEASE, "default", second)

    assert (duplicate.value.status, stale.value.status) == (409, 409)
    assert (await leases.read_namespaced_lease(LEASE, "default")).spec.holder_identity == "b"


async def test_two_candidates_one_leader_and_takeover(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    alice, bob = Candidate("alice"), Candidate("bob")
    alice.start(kube_client)
    bob.start(kube_client)
    try:
        await _first_leader(alice, bob)
        leader, follower = (alice, bob) if alice.leading.is_set() else (bob, alice)

        def holder() -> str | None:
            lease = api_double.find("coordination.k8s.io/v1", "Lease", "default", LEASE)
            return lease["spec"]["holderIdentity"] if lease else None

        first_renewal = api_double.find("coordination.k8s.io/v1", "Lease", "default", LEASE)
        assert first_renewal is not None
        renewed_at = first_renewal["spec"].get("renewTime")

        def renewed_twice() -> bool:
            lease = api_double.find("coordination.k8s.io/v1", "Lease", "default", LEASE)
            return lease is not None and lease["spec"].get("renewTime") != renewed_at

        # While the leader renews, the follower keeps trying and failing: still exactly one leader.
        await api_double.wait_for(renewed_twice, TAKEOVER_DEADLINE_S, "the leader to renew its lease")
        assert holder() == leader.identity
        assert not follower.leading.is_set()

        await leader.stop()
        await _first_leader(follower)
        assert holder() == follower.identity
    finally:
        await alice.stop()
        await bob.stop()
