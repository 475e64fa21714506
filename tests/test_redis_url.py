"""``wire.redis_url``: the one place a Redis URL becomes a client, for the gateway and the runtime alike."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from wire.redis_url import ClusterTarget, PoolLimits, SentinelTarget, client, parse_cluster, parse_sentinel

pytestmark = pytest.mark.unit


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials() -> None:
    url = "redis+sentinel://:p%40ss@10.0.0.1:26380,[::1]:26379,sentinel-2/kaltstart/3?sentinel_password=s%2Fp"
    assert parse_sentinel(url) == SentinelTarget(
        sentinels=(("10.0.0.1", 26380), ("::1", 26379), ("sentinel-2", 26379)),
        service="kaltstart",
        db=3,
        password="p@ss",
        sentinel_password="s/p",
    )


def test_a_sentinel_url_with_a_user_and_no_db() -> None:
    target = parse_sentinel("redis+sentinel://announcer:secret@sentinel:26379/kaltstart")
    assert (target.username, target.password, target.db, target.sentinel_password) == ("announcer", "secret", 0, None)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://host:26379", "names its service"),
        ("redis+sentinel://host:26379/", "names its service"),
        ("redis+sentinel://host:26379/svc/0/extra", "names its service"),
        ("redis+sentinel:///svc", "at least one Sentinel"),
        ("redis+sentinel://host:port/svc", "not a Sentinel address"),
        ("redis+sentinel://host:99999/svc", "not a Sentinel address"),
        ("redis+sentinel://host/svc/zero", "not a database number"),
        ("redis+sentinel://host/svc?password=x", "unknown"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_the_part(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_sentinel(url)


def test_the_password_is_never_in_the_error() -> None:
    with pytest.raises(ValueError) as raised:
        parse_sentinel("redis+sentinel://:hunter2@host:x/svc")
    assert "hunter2" not in str(raised.value)


async def test_a_plain_url_gets_a_bounded_blocking_pool() -> None:
    redis = client("redis://:pw@127.0.0.1:6379/2", PoolLimits(timeout_s=1.5, max_connections=7, pool_timeout_s=3))
    assert isinstance(redis, Redis)
    pool = redis.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout, pool.connection_kwargs["db"]) == (7, 3, 2)
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    await redis.aclose()


async def test_a_sentinel_url_gets_a_bounded_blocking_pool_that_follows_the_primary() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/kaltstart/1"
    redis = client(url, PoolLimits(timeout_s=1.5, max_connections=7, pool_timeout_s=3))
    assert isinstance(redis, Redis)
    pool = redis.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout, pool.connection_kwargs["db"]) == (7, 3, 1)
    assert pool.connection_kwargs["password"] == "pw"
    await redis.aclose()


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    url = "redis+cluster://user:p%40ss@10.0.0.1:7000,[::1],redis-2:7001/0"
    assert parse_cluster(url) == ClusterTarget(
        nodes=(("10.0.0.1", 7000), ("::1", 6379), ("redis-2", 7001)), username="user", password="p@ss"
    )
    assert parse_cluster("redis+cluster://node").nodes == (("node", 6379),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "at least one cluster node"),
        ("redis+cluster://a:1,,b:2", "at least one cluster node"),
        ("redis+cluster://host:port", "not a cluster node address"),
        ("redis+cluster://host:6379/1", "database 0 only"),
        ("redis+cluster://host:6379?ssl=1", "no parameters"),
    ],
)
def test_a_malformed_cluster_url_is_refused_naming_the_part(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_cluster(url)


async def test_a_cluster_url_gets_a_cluster_client_bounded_per_node() -> None:
    redis = client("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2", PoolLimits(timeout_s=1.5, max_connections=7))
    assert isinstance(redis, RedisCluster)
    nodes = redis.nodes_manager.startup_nodes.values()
    assert sorted(n.port for n in nodes) == [1, 2]
    assert {(n.max_connections, n.connection_kwargs["password"]) for n in nodes} == {(7, "pw")}
    await redis.aclose()
