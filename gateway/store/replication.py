"""``WAIT`` on a Redis Cluster: a script's calls, then ``WAIT``, on the one connection that ran them.

``WAIT n timeout`` counts the replicas that acknowledged every write *of its own connection* so far. On one Redis
the enqueue pipeline ends with it (``gateway.queue.stream``). redis-py's cluster pipeline cannot be trusted with it:
it sends a keyless command such as ``WAIT`` to a default node, not the node of the writes, and it resends failed
commands one by one on other connections, where a ``WAIT`` that follows no write answers at once with every replica
(a false acknowledgement). So here the calls are grouped by the primary of their first key's slot, and each group is
sent with its ``WAIT`` on one connection of that node (``ClusterNode.execute_pipeline``), without retries: a call
that meets a failover (a connection error, ``MOVED`` to the promoted replica) fails, as any enqueue during an outage
(503 + Retry-After), and the client's slot map is refreshed by its next command that meets the change (the
autoscaler reads every model's load each scale interval).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import RedisError

from gateway.store.pipelining import Call


async def scripts_then_wait(
    cluster: RedisCluster, sha: str, calls: Sequence[Call], replicas: int, timeout_ms: int
) -> tuple[list[object], list[object]]:
    """Run the script ``sha`` once per call on the primary of its first key, each node's calls followed by ``WAIT
    replicas timeout_ms`` on the same connection. Per call: its reply (an exception for one that failed), and its
    node's ``WAIT`` reply (the replicas that acknowledged, or an exception)."""
    await cluster.initialize()  # at once once the client has its slot map
    replies: list[object] = [None] * len(calls)
    acked: list[object] = [None] * len(calls)
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for at, (keys, _) in enumerate(calls):
        try:
            node = cluster.get_node_from_key(keys[0])
        except RedisError as exc:  # a slot no node serves: the cluster is down
            replies[at] = acked[at] = exc
            continue
        if node is not None:
            by_node.setdefault(node.name, (node, []))[1].append(at)

    async def on(node: ClusterNode, group: list[int]) -> None:
        commands = [
            PipelineCommand(n, "EVALSHA", sha, len(calls[at][0]), *calls[at][0], *calls[at][1])
            for n, at in enumerate(group)
        ]
        commands.append(PipelineCommand(len(group), "WAIT", replicas, timeout_ms))
        try:
            await node.execute_pipeline(commands)
        except (RedisError, OSError) as exc:  # the connection failed before any reply
            for at in group:
                replies[at] = acked[at] = exc
            return
        for at, command in zip(group, commands, strict=False):
            replies[at], acked[at] = command.result, commands[-1].result

    await asyncio.gather(*(on(node, group) for node, group in by_node.values()))
    return replies, acked
