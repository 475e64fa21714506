from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import helm_python
import pytest
import yaml

from tests.chart.rendering import CHART_DIR, NEXT_CHART_VERSION
from tests.kube.fixtures import api_double, kube_client, kubeconfig, kubelet_settings

__all__ = ["api_double", "api_token", "chart", "kube_client", "kubeconfig", "kubelet_settings", "next_chart"]


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture
def api_token() -> str | None:
    """No token: the Helm library's client-go sends no bearer token to a plain-HTTP server."""
    return None


@pytest.fixture
def next_chart(tmp_path: Path) -> Path:
    """The chart as its next release: a new chart version, the same application (so the same images)."""
    copied = tmp_path / "kaltstart"
    shutil.copytree(CHART_DIR, copied)
    metadata = yaml.safe_load((copied / "Chart.yaml").read_text())
    metadata["version"] = NEXT_CHART_VERSION
    (copied / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    return copied
