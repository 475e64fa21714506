"""Tests that run against the Kubernetes API double (``tests.kube.double``)."""
