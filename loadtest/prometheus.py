"""Reading the gateway's ``/metrics`` (Prometheus text format): just enough to get a labelled sample's value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Scrape", "parse"]

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def matching(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for (sample, labels), value in self.samples.items():
            if sample == name:
                yield dict(labels), value

    def total(self, name: str) -> float:
        return sum(value for _labels, value in self.matching(name))

    def by_model(self, name: str, **labels: str) -> dict[str, float]:
        """``{model: value}`` for the samples of ``name`` that carry ``labels`` (and a ``model`` label)."""
        found = {}
        for sample_labels, value in self.matching(name):
            if "model" in sample_labels and all(sample_labels.get(k) == v for k, v in labels.items()):
                found[sample_labels["model"]] = value
        return found


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_text, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        labels = frozenset(
            (k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in _LABEL.findall(label_text or "")
        )
        samples[(name, labels)] = value
    return Scrape(samples)
