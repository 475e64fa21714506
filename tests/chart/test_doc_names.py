"""The resource names the docs give are the names the chart renders.

The chart names its objects after its full name: the release name if it contains "kaltstart", else
``<release>-kaltstart``. The docs write that ``<fullname>``; every ``<fullname>-...`` they mention must be rendered,
for a release name with "kaltstart" in it and one without, and no doc may name a resource after ``<release>`` alone.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import helm_python
import pytest

from tests.chart.rendering import CHART_DIR, REPO, Rendered, render

pytestmark = pytest.mark.chart

DOCS = sorted(
    [
        REPO / "README.md",
        REPO / "docs" / "helm.md",
        REPO / "docs" / "kubernetes.md",
        REPO / "docs" / "vllm.md",
        CHART_DIR / "README.md",
        *(REPO / "docs" / "security").glob("*.md"),
    ]
)
#: A documented name after the full name: ``<fullname>-api-keys``, ``<fullname>-<model>``...
DOCUMENTED = re.compile(r"<fullname>-((?:[a-z0-9-]|<[a-z]+>)+)")
#: How the docs write a model's part of a name, and the model this test renders for it.
MODEL_PLACEHOLDERS = ("<model>", "<name>")
MODEL = "qwen"
#: Every optional object on, so that each documented name has something to match.
VALUES = {
    "models": [{"name": MODEL, "source": "org/qwen"}],
    "prefetch": {"enabled": True},
    "monitoring": {"serviceMonitor": {"enabled": True}, "dashboard": {"enabled": True}},
}
#: (release name, the full name the chart makes of it): with and without "kaltstart" in it.
RELEASES = [("kaltstart", "kaltstart"), ("llm", "llm-kaltstart"), ("kaltstart-prod", "kaltstart-prod")]
#: Concrete names docs/helm.md gives as examples of the rule, by release name.
EXAMPLES = {
    "kaltstart": ["kaltstart", "kaltstart-api-keys", "kaltstart-gateway"],
    "llm": ["llm-kaltstart", "llm-kaltstart-api-keys", "llm-kaltstart-gateway"],
}


def _documented_suffixes() -> dict[str, set[str]]:
    """Each ``<fullname>-...`` suffix the docs mention, with the files that mention it."""
    found: dict[str, set[str]] = {}
    for path in DOCS:
        for match in DOCUMENTED.findall(path.read_text()):
            suffix = match.rstrip("-")
            for placeholder in MODEL_PLACEHOLDERS:
                suffix = suffix.replace(placeholder, MODEL)
            found.setdefault(suffix, set()).add(str(path.relative_to(REPO)))
    return found


def _names(rendered: Rendered) -> set[str]:
    """Every object's name, and the last part of every hostPath (a model's cache directory is named too)."""
    names = {obj["metadata"]["name"] for obj in rendered.objects}
    for _, spec in rendered.pod_specs():
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                names.add(PurePosixPath(volume["hostPath"]["path"]).name)
    return names


def test_the_docs_name_the_chart_s_resources_after_its_full_name() -> None:
    stale = {str(p.relative_to(REPO)): re.findall(r"<release>-(?!kaltstart`)[\w<>-]+", p.read_text()) for p in DOCS}
    assert {path: names for path, names in stale.items() if names} == {}
    documented = _documented_suffixes()
    # The names a reader needs most are documented this way (so the test below has something to check).
    assert {"api-keys", "runtime-token", "redis", "redis-headless", "gateway-metrics", "gateway-lease", MODEL} <= set(
        documented
    )


@pytest.mark.parametrize(("release", "fullname"), RELEASES)
def test_every_documented_name_is_rendered(chart: helm_python.Chart, release: str, fullname: str) -> None:
    names = _names(render(chart, VALUES, release=release))
    missing = {
        f"{fullname}-{suffix}": sorted(where)
        for suffix, where in _documented_suffixes().items()
        if f"{fullname}-{suffix}" not in names
    }
    assert missing == {}, f"documented but not rendered (release {release!r})"
    assert fullname in names  # the API Service


@pytest.mark.parametrize("release", sorted(EXAMPLES))
def test_the_examples_of_the_naming_rule_hold(chart: helm_python.Chart, release: str) -> None:
    names = _names(render(chart, VALUES, release=release))
    helm_md = (REPO / "docs" / "helm.md").read_text()
    assert f"`helm install {release}`" in helm_md
    for name in EXAMPLES[release]:
        assert name in names
        assert f"`{name}`" in helm_md
