"""Render the chart offline with the real Helm library and look manifests up by kind and name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "kaltstart"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "kaltstart"
NAMESPACE = "llm"
#: The chart's next release in upgrade tests (the ``next_chart`` fixture): a new chart version, the same app.
NEXT_CHART_VERSION = "0.2.0"
NEXT_CHART_LABEL = f"kaltstart-{NEXT_CHART_VERSION}"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The objects one release would create, parsed."""

    objects: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[Manifest, Manifest]]:
        """(workload, pod spec) of every Deployment, StatefulSet and DaemonSet."""
        for obj in self.objects:
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                yield obj, obj["spec"]["template"]["spec"]


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return loaded


def render(chart: helm_python.Chart, values: Mapping[str, Any] | None = None, *, release: str = RELEASE) -> Rendered:
    manifests = chart.render(dict(values or {}), name=release, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects)


def notes(chart: helm_python.Chart, values: Mapping[str, Any] | None = None) -> str:
    manifests = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
