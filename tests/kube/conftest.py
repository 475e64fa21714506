"""Fixtures for the Kubernetes API double's own tests (defined in tests/kube/fixtures.py)."""

from tests.kube.fixtures import api_double, api_token, kube_client, kubeconfig, kubelet_settings

__all__ = ["api_double", "api_token", "kube_client", "kubeconfig", "kubelet_settings"]
