"""``python -m tests.kube.double``: the double in its own process, for a gateway that runs elsewhere."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernetes_asyncio import client, config, watch

from tests.kube.double import manifests
from tests.kube.double.commands import TINY_POD
from tests.kube.double.manifests import as_model

pytestmark = pytest.mark.kubernetes
REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 15.0


@pytest.fixture
async def standalone(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The double as a subprocess: yields its URL and kubeconfig; SIGTERM at teardown must exit 0."""
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kube.double", "--port", "0", "--kubeconfig", str(kubeconfig),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(DEADLINE_S):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield line.split()[-1], kubeconfig
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE_S):
            code = await process.wait()
    assert code == 0


async def test_standalone_double_runs_pods_and_serves_hooks_over_http(standalone: tuple[str, Path]) -> None:
    url, kubeconfig = standalone
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as kube_client:
        apps, discovery = client.AppsV1Api(kube_client), client.DiscoveryV1Api(kube_client)
        command = [sys.executable, "-I", str(TINY_POD)]
        await apps.create_namespaced_deployment("default", as_model(manifests.deployment("llama", 1, command=command)))

        async with watch.Watch() as stream, asyncio.timeout(DEADLINE_S):
            selector = "kubernetes.io/service-name=llama"
            async for event in stream.stream(
                discovery.list_namespaced_endpoint_slice, "default", label_selector=selector
            ):
                endpoint = event["object"].endpoints[0]
                if endpoint.conditions.ready:
                    port = event["object"].ports[0].port
                    break

    async with httpx.AsyncClient(trust_env=False) as http:
        served = await http.get(f"http://127.0.0.1:{port}/")
        hook = await http.post(f"{url}/_double/break-watches", json={"abrupt": False})

    assert served.status_code == 200
    assert hook.json() == {"result": 0}
