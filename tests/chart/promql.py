"""Real PromQL for the chart's alert rules and dashboard: ``promtool test rules`` (Debian's ``prometheus`` package;
``make test`` installs it when missing) evaluates them against input series, and the gateway's registry says which
series names exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.metrics import Metrics

#: A metric name in an expression.
METRIC_NAME = re.compile(r"\bkaltstart_[a-z_]+")


def exported_names() -> set[str]:
    """Every series name the gateway's registry can export (a histogram's ``_bucket``, ``_sum``, ``_count``)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: `make test` installs it (Debian: apt-get install --no-install-recommends "
            "prometheus); the alert rules and the dashboard are tested with it, not skipped"
        )
    return found


def run_rule_tests(tmp_path: Path, groups: list[dict[str, Any]], tests: list[dict[str, Any]]) -> str:
    """Run ``promtool test rules`` on ``tests`` with the rule ``groups``; fails the test with promtool's report
    if a case fails. Returns promtool's output."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [promtool(), "test", "rules", "tests.yaml"]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"promtool test rules failed:\n{report}")
    return report


def series(name: str, labels: dict[str, str]) -> str:
    """A series in promtool's notation: ``name{a="b", ...}``."""
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def go_number(value: float) -> str:
    """``value`` as Prometheus's templates print ``$value`` (Go's shortest form: 8, not 8.0)."""
    return str(int(value)) if float(value).is_integer() else repr(value)
