"""The chart's alerts with a real promtool: the rules load, each alert fires and stays quiet when it should, and
each links its runbook entry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import ROOT, find_tool, run

HERE = Path(__file__).parent
EXPECTED_ALERTS = {
    "FlywheelStageFailingRepeatedly",
    "FlywheelGenerationStuck",
    "FlywheelCanaryGuardrailBreach",
    "FlywheelSampleRatioMismatch",
    "FlywheelOfflineOnlineDivergence",
    "FlywheelCrossoverUsers",
    "FlywheelReconcileErrors",
    "FlywheelExporterRefusingWrites",
    "FlywheelOperatorDown",
    "FlywheelExporterDown",
    "FlywheelPaused",
}


def _alerts(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip("promtool not found: run `make tools` (installs the Debian prometheus package)")
    return path


def test_rules_load_in_promtool(rule_groups: list[dict], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups}))
    result = run([_promtool(), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(rule_groups: list[dict], tmp_path: Path) -> None:
    """Annotations are templates checked by `promtool check rules`; the unit tests pin expressions, `for` and
    labels, so the rules are tested without their annotations (promtool would otherwise compare every text)."""
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in rule_groups]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = run([_promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_cover_every_alert_firing_and_not_firing(rule_groups: list[dict]) -> None:
    names = {rule["alert"] for rule in _alerts(rule_groups)}
    assert names == EXPECTED_ALERTS
    cases = [case for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
             for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fired == names and quiet == names


def test_every_alert_links_its_runbook_entry(rule_groups: list[dict]) -> None:
    headings = {h.lower() for h in re.findall(r"^## (\S+)$", (ROOT / "docs" / "runbook.md").read_text(), re.M)}
    for rule in _alerts(rule_groups):
        url = rule["annotations"]["runbook_url"]
        assert url.endswith(f"docs/runbook.md#{rule['alert'].lower()}")
        assert rule["alert"].lower() in headings, f"docs/runbook.md has no section '## {rule['alert']}'"
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in {"warning", "critical"}


def test_a_first_stage_failure_alerts_on_the_counters_the_operator_really_exports(
    rule_groups: list[dict], tmp_path: Path
) -> None:
    """The alert's input is scraped from OperatorMetrics driven by a real planner run (two failed attempts of one
    stage), not hand-seeded: prometheus_client creates a counter series at its first increment, and increase()
    counts nothing for a series' first sample, so the series must exist at 0 before the first failure."""
    from datetime import timedelta

    from flywheel_operator.metrics import OperatorMetrics
    from prometheus_client import CollectorRegistry

    from tests.planner.harness import World, generation

    metrics = OperatorMetrics(CollectorRegistry())
    world = World(generation(retry={"maxAttempts": 3, "backoff": "1s"}))
    previous = None
    scraped: list[float | None] = []

    def scrape() -> None:
        labels = {"namespace": "characters", "stage": "curate"}
        scraped.append(metrics.registry.get_sample_value("flywheel_stage_failures_total", labels))

    def reconcile() -> None:
        nonlocal previous
        current = world.step().status
        metrics.observe("characters", "gen2", previous, current, now=world.now)
        previous = current
        scrape()

    scrape()  # the operator runs; no generation yet
    reconcile()  # attempt 1 starts
    scrape()
    world.finish("gen2-curate-1", ok=False)
    reconcile()  # attempt 1 failed
    world.advance(timedelta(seconds=1))
    reconcile()  # attempt 2 starts
    world.finish("gen2-curate-2", ok=False)
    reconcile()  # attempt 2 failed
    assert scraped[-1] == 2
    values = " ".join("_" if v is None else f"{v:g}" for v in scraped)
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in rule_groups]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
    end = f"{10 * (len(scraped) - 1)}m"
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "10m",
            "input_series": [{"series": 'flywheel_stage_failures_total{namespace="characters", stage="curate"}',
                              "values": values}],
            "alert_rule_test": [{"eval_time": end, "alertname": "FlywheelStageFailingRepeatedly", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "namespace": "characters", "stage": "curate"}}]}],
        }],
    }
    (tmp_path / "scraped_test.yaml").write_text(yaml.safe_dump(test))
    result = run([_promtool(), "test", "rules", "scraped_test.yaml"], cwd=tmp_path)
    assert result.returncode == 0, f"scraped values {values}:\n{result.stdout}{result.stderr}"
