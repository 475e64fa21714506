"""Pytest fixtures for tests against the Kubernetes API double.

Other test folders can use them with ``pytest_plugins = ["tests.kube.fixtures"]`` in the root conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from tests.kube.double import ApiDouble, KubeletSettings, tiny_pod_command


@pytest.fixture
def kubelet_settings() -> KubeletSettings:
    """Override in a test module to change pod timings; the defaults suit fast tests."""
    return KubeletSettings(readiness_period_s=0.1, termination_grace_s=2.0, shutdown_grace_s=1.0)


@pytest.fixture
def api_token() -> str | None:
    """The bearer token the double requires; override with None for clients that send none over plain HTTP
    (the Helm library's client-go does not)."""
    return "kaltstart-double-token"


@pytest.fixture
async def api_double(kubelet_settings: KubeletSettings, api_token: str | None) -> AsyncIterator[ApiDouble]:
    """A fresh double per test; its fake pods run ``tiny_pod.py`` unless the test sets ``command_for``."""
    async with ApiDouble(kubelet=kubelet_settings, token=api_token) as api:
        api.kubelet.command_for = tiny_pod_command
        yield api


@pytest.fixture
def kubeconfig(api_double: ApiDouble, tmp_path: Path) -> Path:
    return api_double.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def kube_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """An unmodified ``kubernetes_asyncio`` ApiClient configured from the double's kubeconfig."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield api_client
