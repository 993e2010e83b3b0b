"""Every PromQL expression of the alerts and the dashboard names only metrics the operator or the exporter
really exports: the names are read from their real registries, not from a list kept by hand."""

from __future__ import annotations

import json
import re

import pytest
from flywheel_operator.gate.exporter import StoreCollector
from flywheel_operator.gate.store import DurableStore
from flywheel_operator.metrics import OperatorMetrics, exposed_names
from prometheus_client import CollectorRegistry

from tests.chart.conftest import CHART

PROMETHEUS_SYNTHETIC = {"up"}
"""Series Prometheus writes itself for every target."""
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions, keywords, label names (in
    braces or grouping clauses), string contents, durations or Grafana variables."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($namespace, $__rate_interval)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"(?<![A-Za-z0-9_:])[0-9][0-9.]*(e[+-]?[0-9]+)?(ms|s|m|h|d|w|y)*", " ", text)  # numbers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def registry_names() -> set[str]:
    operator = OperatorMetrics(CollectorRegistry())
    exporter = CollectorRegistry(auto_describe=False)
    exporter.register(StoreCollector(DurableStore(None), {}))
    return exposed_names(operator.registry) | exposed_names(exporter) | PROMETHEUS_SYNTHETIC


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (stage) (increase(flywheel_stage_failures_total{namespace=~"$namespace"}[6h])) >= 2',
         {"flywheel_stage_failures_total"}),
        ('a_metric / on (generation) group_left (arm) b_metric{x="y"} unless c offset 5m',
         {"a_metric", "b_metric", "c"}),
        ('histogram_quantile(0.9, sum by (le) (rate(h_bucket[$__rate_interval])))', {"h_bucket"}),
        ('absent(up{job="a b", namespace="ns"} == 1)', {"up"}),
    ],
)
def test_metric_names_are_extracted_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_registries_expose_the_documented_families() -> None:
    names = registry_names()
    assert {"flywheel_stage_duration_seconds_bucket", "flywheel_generation_phase", "flywheel_users_exposed_total",
            "flywheel_guardrail_events_total", "flywheel_stage_failures_total"} <= names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((CHART / "dashboards" / "characterflywheel.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_alerts_use_only_exported_metrics(rule_groups: list[dict]) -> None:
    known = registry_names()
    for group in rule_groups:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert not unknown, f"{rule['alert']} uses metrics nobody exports: {sorted(unknown)}"


def test_dashboard_uses_only_exported_metrics() -> None:
    known = registry_names()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        if expr.startswith("label_values("):
            expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr)
        unknown = metric_names(expr) - known
        assert not unknown, f"dashboard query uses metrics nobody exports: {sorted(unknown)} in {expr}"
