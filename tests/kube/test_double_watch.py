"""Watch semantics through ``kubernetes_asyncio.watch.Watch().stream(...)``, unmodified."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kube.double import ApiDouble, manifests
from tests.kube.double.manifests import as_model

pytestmark = pytest.mark.kubernetes
DEADLINE_S = 5.0


async def _events(stream: watch.Watch, count: int) -> list[tuple[str, str]]:
    """The next ``count`` events as (type, name), within the deadline."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(DEADLINE_S):
        async for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == count:
                break
    return seen


async def _added_names(stream: watch.Watch, count: int) -> list[str]:
    """Names of the next ``count`` ADDED events, skipping other events, within the deadline."""
    names: list[str] = []
    async with asyncio.timeout(DEADLINE_S):
        async for event in stream:
            if event["type"] == "ADDED":
                names.append(event["object"].metadata.name)
            if len(names) == count:
                break
    return names


async def _drain(stream: AsyncIterator[Any]) -> list[str]:
    """Event types until the stream ends by itself, within the deadline."""
    async with asyncio.timeout(DEADLINE_S):
        return [event["type"] async for event in stream]


async def test_watch_from_a_resource_version_sees_only_later_changes(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("before")))
    listed = await core.list_namespaced_config_map("default")
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("after")))
    await core.patch_namespaced_config_map("after", "default", {"data": {"k": "v"}})
    await core.delete_namespaced_config_map("before", "default")

    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version)
        seen = await _events(stream, 3)

    assert seen == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]


async def test_watch_without_resource_version_starts_with_synthetic_added(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("existing")))

    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default")
        first = await _events(stream, 1)
        await core.create_namespaced_config_map("default", as_model(manifests.config_map("live")))
        second = await _events(stream, 1)

    assert first + second == [("ADDED", "existing"), ("ADDED", "live")]


async def test_watch_with_label_selector_filters_and_reports_objects_leaving_it(
    kube_client: client.ApiClient,
) -> None:
    core = client.CoreV1Api(kube_client)
    since = (await core.list_namespaced_config_map("default")).metadata.resource_version
    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default", label_selector="tier=gpu", resource_version=since)
        await core.create_namespaced_config_map(
            "default", as_model(manifests.config_map("cpu-one", labels={"tier": "cpu"}))
        )
        await core.create_namespaced_config_map(
            "default", as_model(manifests.config_map("gpu-one", labels={"tier": "gpu"}))
        )
        await core.patch_namespaced_config_map("gpu-one", "default", {"metadata": {"labels": {"tier": "cpu"}}})
        seen = await _events(stream, 2)

    assert seen == [("ADDED", "gpu-one"), ("DELETED", "gpu-one")]


async def test_cluster_wide_watch_sees_every_namespace(kube_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube_client)
    since = (await apps.list_deployment_for_all_namespaces()).metadata.resource_version
    async with watch.Watch() as stream:
        stream.stream(apps.list_deployment_for_all_namespaces, label_selector="app", resource_version=since)
        await apps.create_namespaced_deployment("team-a", as_model(manifests.deployment("one", 0, namespace="team-a")))
        await apps.create_namespaced_deployment("team-b", as_model(manifests.deployment("two", 0, namespace="team-b")))
        added = await _added_names(stream, 2)

    assert added == ["one", "two"]


async def test_watch_ends_at_timeout_seconds(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    async with watch.Watch() as stream:
        types = await _drain(stream.stream(core.list_namespaced_config_map, "default", timeout_seconds=1))
    assert types == []


async def test_watch_from_before_the_history_gets_410_expired(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    created = await core.create_namespaced_config_map("default", as_model(manifests.config_map("cm")))
    await core.patch_namespaced_config_map("cm", "default", {"data": {"k": "v"}})
    api_double.expire_history()

    async with watch.Watch() as stream:
        old = created.metadata.resource_version
        with pytest.raises(ApiException) as raised:
            await _drain(stream.stream(core.list_namespaced_config_map, "default", resource_version=old))

    assert raised.value.status == 410
    assert "Expired" in str(raised.value.reason)


async def test_break_watches_ends_a_stream_cleanly(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("seed")))

    async with watch.Watch() as stream:
        # With timeout_seconds set, Watch does not reconnect by itself: the end of the stream is visible.
        stream.stream(core.list_namespaced_config_map, "default", timeout_seconds=60)
        assert await _events(stream, 1) == [("ADDED", "seed")]
        assert api_double.break_watches() == 1
        rest = await _drain(stream)

    assert rest == []


async def test_watch_resumes_after_a_clean_break_without_losing_events(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("seed")))

    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default")
        await _events(stream, 1)
        api_double.break_watches()
        await core.create_namespaced_config_map("default", as_model(manifests.config_map("during-break")))
        seen = await _events(stream, 1)

    assert seen == [("ADDED", "during-break")]
    assert len(api_double.requests_for("watch", "configmaps")) == 2


async def test_break_watches_abruptly_drops_the_connection(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("seed")))

    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default")
        await _events(stream, 1)
        api_double.break_watches(abrupt=True)
        with pytest.raises(aiohttp.ClientError):
            await _drain(stream)


async def test_fail_next_on_watch_is_an_http_error(api_double: ApiDouble, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    api_double.fail_next("watch", "configmaps", status=500)

    async with watch.Watch() as stream:
        with pytest.raises(ApiException) as raised:
            await _drain(stream.stream(core.list_namespaced_config_map, "default", timeout_seconds=1))

    assert raised.value.status == 500


async def test_expire_then_break_makes_a_resuming_watch_raise_410(
    api_double: ApiDouble, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    await core.create_namespaced_config_map("default", as_model(manifests.config_map("seed")))

    async with watch.Watch() as stream:
        stream.stream(core.list_namespaced_config_map, "default")
        await _events(stream, 1)
        await core.create_namespaced_config_map("default", as_model(manifests.config_map("later")))
        await _events(stream, 1)
        api_double.expire_history()
        api_double.break_watches()
        # Watch reconnects from its last resourceVersion, gets 410, retries once, then gives up: the caller
        # must list again.
        with pytest.raises(ApiException) as raised:
            await _drain(stream)

    assert raised.value.status == 410
