"""The chart's alert rules (monitoring.prometheusRule), as rendered by the real Helm library, run through
``promtool test rules``: each alert fires on series that should trigger it (with its labels and annotations as
Prometheus expands them) and stays silent on series that should not, among them series of another release."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.chart.promql import METRIC_NAME, exported_names, go_number, run_rule_tests, series
from tests.chart.rendering import NAMESPACE, REPO, render

pytestmark = pytest.mark.chart

ENABLED: dict[str, Any] = {"monitoring": {"prometheusRule": {"enabled": True}}}
#: The labels the ServiceMonitor's scrapes of this release carry (its job: the metrics Service's name).
RELEASE = {"job": "kaltstart-gateway-metrics", "namespace": NAMESPACE}
#: Two gateway replicas of this release, and one of another release in the same namespace.
GW_A = {**RELEASE, "instance": "10.0.0.1:9090", "pod": "kaltstart-gateway-a"}
GW_B = {**RELEASE, "instance": "10.0.0.2:9090", "pod": "kaltstart-gateway-b"}
OTHER = {"job": "other-gateway-metrics", "namespace": NAMESPACE, "instance": "10.0.0.3:9090", "pod": "other-a"}
ALERT_NAMES = {
    "KaltstartRedisUnreachable",
    "KaltstartQueueNearCap",
    "KaltstartColdStartOverBudget",
    "KaltstartScalingStuck",
    "KaltstartPoisonRequests",
    "KaltstartAnnouncementsRefused",
    "KaltstartReplicasFailing",
}


@dataclass(frozen=True)
class Case:
    """Input series (promtool's notation, a sample a minute from 0m), the alerts that fire at ``fires_at`` (the
    alert's own labels beyond alertname and severity, and its ``$value``), and a time when none does."""

    alert: str
    input: dict[str, str]
    fires_at: str
    fired: list[tuple[dict[str, str], float]]
    silent_at: str


def on(gateway: dict[str, str], name: str, **labels: str) -> str:
    return series(name, {**gateway, **labels})


def both(name: str, values: str, **labels: str) -> dict[str, str]:
    """The same series on both gateway replicas (a global gauge, or a counter both count alike)."""
    return {on(GW_A, name, **labels): values, on(GW_B, name, **labels): values}


CASES = [
    Case(
        "KaltstartRedisUnreachable",
        {
            on(GW_A, "kaltstart_redis_up"): "1 1 0x6",  # lost Redis at 2m
            on(GW_B, "kaltstart_redis_up"): "1x7",
            on(OTHER, "kaltstart_redis_up"): "0x7",  # another release's: not this release's alert
        },
        fires_at="4m",
        fired=[(GW_A, 0)],
        silent_at="2m",  # pending for its `for`
    ),
    Case(
        "KaltstartQueueNearCap",
        {
            **both("kaltstart_queue_limit", "10x20"),
            # Every gateway replica exports the global depth: 6 + 2 = 8 is 80 % of 10, not 16.
            **both("kaltstart_queue_depth", "6x20", model="hot"),
            **both("kaltstart_in_flight", "2x20", model="hot"),
            # 3 + 1 = 4: summed over both replicas it would read 8 and fire.
            **both("kaltstart_queue_depth", "3x20", model="calm"),
            **both("kaltstart_in_flight", "1x20", model="calm"),
        },
        fires_at="10m",
        fired=[({"namespace": NAMESPACE, "model": "hot"}, 8)],
        silent_at="4m",
    ),
    Case(
        "KaltstartColdStartOverBudget",
        {
            on(GW_A, "kaltstart_cold_starts_over_budget_total", model="slow"): "0x60 1x60",
            on(GW_B, "kaltstart_cold_starts_over_budget_total", model="slow"): "0x121",
            **both("kaltstart_cold_starts_over_budget_total", "0x121", model="fast"),
        },
        fires_at="90m",
        fired=[({"namespace": NAMESPACE, "model": "slow"}, 1)],
        silent_at="121m",  # an hour later
    ),
    Case(
        "KaltstartScalingStuck",
        {
            **both("kaltstart_replicas", "1x30", model="stuck", state="desired"),
            **both("kaltstart_replicas", "0x30", model="stuck", state="ready"),
            **both("kaltstart_replicas", "2x30", model="fine", state="desired"),
            **both("kaltstart_replicas", "2x30", model="fine", state="ready"),
            **both("kaltstart_replicas", "1x30", model="slow", state="desired"),
            **both("kaltstart_replicas", "0x9 1x20", model="slow", state="ready"),  # ready after 10 minutes
        },
        fires_at="16m",
        fired=[({"namespace": NAMESPACE, "model": "stuck"}, 1)],
        silent_at="14m",
    ),
    Case(
        "KaltstartPoisonRequests",
        {
            on(GW_A, "kaltstart_poison_requests_total", model="bad"): "0x30 1x60",
            on(GW_B, "kaltstart_poison_requests_total", model="bad"): "0x90",
            **both("kaltstart_poison_requests_total", "0x90", model="good"),
        },
        fires_at="45m",
        fired=[({"namespace": NAMESPACE, "model": "bad"}, 1)],
        silent_at="50m",
    ),
    Case(
        "KaltstartAnnouncementsRefused",
        {
            **both("kaltstart_replica_announcements_total", "0x30 2x60", outcome="refused"),  # each gateway hears it
            **both("kaltstart_replica_announcements_total", "0x90", outcome="malformed"),
            on(GW_A, "kaltstart_replica_announcements_total", outcome="unconfirmed"): "0x30 5x60",
            on(GW_A, "kaltstart_replica_announcements_total", outcome="accepted"): "0x30 9x60",
        },
        fires_at="45m",
        fired=[({"namespace": NAMESPACE, "outcome": "refused"}, 4)],
        silent_at="50m",
    ),
    Case(
        "KaltstartReplicasFailing",
        {
            on(GW_A, "kaltstart_redeliveries_total", model="flaky"): "0x30 6x60",
            on(GW_B, "kaltstart_redeliveries_total", model="flaky"): "0x90",
            on(GW_A, "kaltstart_redeliveries_total", model="ok"): "0x30 3x60",  # 5 in all: not more than 5
            on(GW_B, "kaltstart_redeliveries_total", model="ok"): "0x30 2x60",
        },
        fires_at="35m",
        fired=[({"namespace": NAMESPACE, "model": "flaky"}, 6)],
        silent_at="45m",
    ),
]


def rule_groups(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = render(chart, values or ENABLED).get("PrometheusRule", "kaltstart")["spec"]["groups"]
    return groups


def alert_rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


_TEMPLATE = re.compile(r"\{\{ \$(labels\.(\w+)|value) \}\}")


def _expand(text: str, labels: dict[str, str], value: float) -> str:
    """An annotation as Prometheus expands it (the two template forms the rules use)."""
    return _TEMPLATE.sub(lambda m: labels[m.group(2)] if m.group(2) else go_number(value), text)


def promtool_test(case: Case, rule: dict[str, Any]) -> dict[str, Any]:
    def expected(labels: dict[str, str], value: float) -> dict[str, Any]:
        annotations = {key: _expand(text, labels, value) for key, text in rule["annotations"].items()}
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}

    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in case.input.items()],
        "alert_rule_test": [
            {
                "eval_time": case.fires_at,
                "alertname": case.alert,
                "exp_alerts": [expected(labels, value) for labels, value in case.fired],
            },
            {"eval_time": case.silent_at, "alertname": case.alert, "exp_alerts": []},
        ],
    }


def test_the_rules_are_off_unless_enabled(chart: helm_python.Chart) -> None:
    assert render(chart).of_kind("PrometheusRule") == []


def test_every_alert_is_shipped_and_tested(chart: helm_python.Chart) -> None:
    rule = render(chart, ENABLED).get("PrometheusRule", "kaltstart")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(alert_rules(rule["spec"]["groups"])) == ALERT_NAMES == {case.alert for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.alert)
def test_each_alert_fires_when_it_should_and_only_then(chart: helm_python.Chart, tmp_path: Path, case: Case) -> None:
    groups = rule_groups(chart)
    run_rule_tests(tmp_path, groups, [promtool_test(case, alert_rules(groups)[case.alert])])


def test_thresholds_and_severities_come_from_the_values(chart: helm_python.Chart, tmp_path: Path) -> None:
    alerts = {
        "queueNearCap": {"fraction": 0.4, "severity": "page"},  # the calm model's 4 of 10 now too
        "replicasFailing": {"redeliveries": 4},  # the ok model's 5 now too
        "poisonRequests": {"enabled": False},
    }
    groups = rule_groups(chart, {"monitoring": {"prometheusRule": {"enabled": True, "alerts": alerts}}})
    rules = alert_rules(groups)
    assert "KaltstartPoisonRequests" not in rules
    assert rules["KaltstartQueueNearCap"]["labels"] == {"severity": "page"}
    queue, failing = (next(c for c in CASES if c.alert == name) for name in ("KaltstartQueueNearCap",
                                                                               "KaltstartReplicasFailing"))  # fmt: skip
    queue = Case(
        queue.alert, queue.input, queue.fires_at, [*queue.fired, ({"namespace": NAMESPACE, "model": "calm"}, 4)], "4m"
    )
    failing = Case(
        failing.alert,
        failing.input,
        failing.fires_at,
        [*failing.fired, ({"namespace": NAMESPACE, "model": "ok"}, 5)],
        failing.silent_at,
    )
    run_rule_tests(tmp_path, groups, [promtool_test(c, rules[c.alert]) for c in (queue, failing)])


def test_a_selector_of_your_own_picks_the_series(chart: helm_python.Chart, tmp_path: Path) -> None:
    """Prometheus scraping the gateway some other way (its own job name): the rules read that job's series."""
    values = {"monitoring": {"prometheusRule": {"enabled": True, "selector": 'job="other-gateway-metrics"'}}}
    groups = rule_groups(chart, values)
    rule = alert_rules(groups)["KaltstartRedisUnreachable"]
    case = Case(rule["alert"], {on(OTHER, "kaltstart_redis_up"): "0x7", on(GW_A, "kaltstart_redis_up"): "0x7"},
                "4m", [(OTHER, 0)], "0m")  # fmt: skip
    run_rule_tests(tmp_path, groups, [promtool_test(case, rule)])


def test_the_rules_read_only_series_the_gateway_exports(chart: helm_python.Chart) -> None:
    exprs = [rule["expr"] for rule in alert_rules(rule_groups(chart)).values()]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used <= exported_names(), used - exported_names()


def test_every_alert_has_a_runbook_entry(chart: helm_python.Chart) -> None:
    """Each rule's runbook_url points at a heading of that name in the operations docs."""
    docs = (REPO / "docs" / "operations.md").read_text()
    for name, rule in alert_rules(rule_groups(chart)).items():
        assert rule["annotations"]["runbook_url"].endswith(f"docs/operations.md#{name.lower()}")
        assert re.search(rf"^#+ {name}$", docs, re.MULTILINE), f"no heading {name} in docs/operations.md"
