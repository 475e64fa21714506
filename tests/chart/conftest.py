from __future__ import annotations

from collections.abc import Iterator

import helm_python
import pytest

from tests.chart.rendering import CHART_DIR
from tests.kube.fixtures import api_double, kube_client, kubeconfig, kubelet_settings

__all__ = ["api_double", "api_token", "chart", "kube_client", "kubeconfig", "kubelet_settings"]


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture
def api_token() -> str | None:
    """No token: the Helm library's client-go sends no bearer token to a plain-HTTP server."""
    return None
